/* tests/test_data.c - token streams (byte tokenizer, documents, domains), the
   token-stream file format (exact bytes, round trip, every truncation and
   every bit flip rejected, crafted bad fields), and the built-in corpus
   (determinism, sizes, labels, nesting in code and LaTeX, quotes in stories,
   distinct byte statistics, vocabulary size), with a counting allocator that
   checks for leaks and injects allocation failures. */
#include <math.h>
#include "counting_alloc.h"

/* ---- token streams -------------------------------------------------------- */
static void test_tokens_basics(void)
{
    moexc_tokens t;
    moexc_error err;
    int a = -1, b = -1, again = -1, i;
    long live0 = g_live_blocks;
    char name[40];
    memset(&t, 0, sizeof(t));
    TH_CHECK(moexc_tokens_add_domain(&t, "code", &a, &err) == MOEXC_OK && a == 0, "first domain is 0");
    TH_CHECK(moexc_tokens_add_domain(&t, "stories", &b, &err) == MOEXC_OK && b == 1, "second domain is 1");
    TH_CHECK(moexc_tokens_add_domain(&t, "code", &again, &err) == MOEXC_OK && again == 0 && t.n_domains == 2, "names are reused");
    TH_CHECK(moexc_tokens_add_domain(&t, "", &again, &err) == MOEXC_ERR_ARG, "empty name refused");
    TH_CHECK(moexc_tokens_add_domain(&t, "0123456789012345678901234567890123", &again, &err) == MOEXC_ERR_ARG &&
             strstr(err.message, "1..31 bytes"), "long name refused: %s", err.message);
    TH_CHECK(moexc_tokens_append_bytes(&t, "ab\xff", 3, a, &err) == MOEXC_OK, "append");
    TH_CHECK(t.vocab_size == 256 && t.n == 3 && t.tokens[0] == 'a' && t.tokens[2] == 255 && t.domains[2] == 0, "byte tokens");
    TH_CHECK(moexc_tokens_append_bytes(&t, "x", 1, 2, &err) == MOEXC_ERR_ARG && strstr(err.message, "domain index 2"),
             "unknown domain refused: %s", err.message);
    /* documents: text, a newline if missing, then the separator */
    TH_CHECK(moexc_tokens_append_document(&t, "hi", 2, b, &err) == MOEXC_OK, "document");
    TH_CHECK(moexc_tokens_append_document(&t, "yo\n", 3, b, &err) == MOEXC_OK, "document ending in a newline");
    TH_CHECK(t.n == 3 + 4 + 4, "sizes: %d", (int)t.n);
    TH_CHECK(t.n == 11 && memcmp(t.domains + 3, "\1\1\1\1\1\1\1\1", 8) == 0, "labels");
    {
        static const uint16_t want[8] = { 'h', 'i', '\n', MOEXC_DOC_SEPARATOR, 'y', 'o', '\n', MOEXC_DOC_SEPARATOR };
        TH_CHECK(t.n == 11 && memcmp(t.tokens + 3, want, sizeof(want)) == 0, "separator convention");
    }
    TH_CHECK(moexc_tokens_domain_count(&t, a) == 3 && moexc_tokens_domain_count(&t, b) == 8 &&
             moexc_tokens_domain_count(&t, 5) == 0, "domain counts");
    {
        uint16_t ids[2] = { 7, 300 };
        TH_CHECK(moexc_tokens_append(&t, ids, 2, a, &err) == MOEXC_ERR_ARG && strstr(err.message, "300 >= vocab_size 256"),
                 "id above vocab refused: %s", err.message);
        TH_CHECK(t.n == 11, "nothing appended on error");
        TH_CHECK(moexc_tokens_append(&t, ids, 1, a, &err) == MOEXC_OK && t.n == 12 && t.tokens[11] == 7, "append ids");
    }
    /* growth past the first capacity keeps the data */
    for (i = 0; i < 5000; i++) moexc_tokens_append_bytes(&t, "z", 1, b, &err);
    TH_CHECK(t.n == 5012 && t.tokens[0] == 'a' && t.tokens[5011] == 'z' && t.capacity >= t.n, "growth");
    for (i = 2; i < MOEXC_MAX_DOMAINS; i++) {
        snprintf(name, sizeof(name), "d%d", i);
        moexc_tokens_add_domain(&t, name, NULL, &err);
    }
    TH_CHECK(t.n_domains == MOEXC_MAX_DOMAINS, "16 domains");
    TH_CHECK(moexc_tokens_add_domain(&t, "one-too-many", NULL, &err) == MOEXC_ERR_ARG && strstr(err.message, "maximum"),
             "17th domain refused: %s", err.message);
    moexc_tokens_free(&t);
    TH_CHECK(t.tokens == NULL && t.n == 0 && t.n_domains == 0, "free zeroes the struct");
    moexc_tokens_free(&t);   /* twice is harmless */
    TH_CHECK(g_live_blocks == live0, "no leak (%ld blocks)", g_live_blocks - live0);
}

/* ---- the token-stream file ------------------------------------------------ */
static void fix_crc(unsigned char *buf, size_t size)
{
    moexc__put_u32le(buf + size - 4, moexc__crc32(0, buf, size - 4));
}

static void test_token_file_bytes(void)
{
    /* "hi" in domain "a": the whole file, written out by hand */
    static const unsigned char want[] = {
        'M', 'O', 'E', 'X', 'C', 'T', 'O', 'K',  1, 0, 0, 0,  0, 1, 0, 0,  1, 0, 0, 0,  0, 0, 0, 0,
        2, 0, 0, 0, 0, 0, 0, 0,
        'a', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        'h', 0, 'i', 0,  0, 0 };
    moexc_tokens t, u;
    moexc_error err;
    unsigned char *bytes;
    size_t size;
    int a;
    long live0 = g_live_blocks;
    const char *path = tmp_path("data_bytes.tok");
    TH_CHECK(moexc__crc32(0, "123456789", 9) == 0xCBF43926u, "CRC-32 check value");
    {   /* long inputs go eight bytes a step through built tables: the same CRC as
           the byte-by-byte path, here fed the same bytes in short pieces, for
           lengths around the switch and with a tail of 1 to 7 bytes */
        static const size_t lengths[] = { MOEXC__CRC_SLICE_MIN - 1, MOEXC__CRC_SLICE_MIN, MOEXC__CRC_SLICE_MIN + 7,
                                          100003 };
        unsigned char *big = (unsigned char *)malloc(100003);
        size_t k, i, piece = 1000;                      /* < MOEXC__CRC_SLICE_MIN: the short path */
        moexc_rng rng;
        moexc_rng_seed(&rng, 7);
        for (i = 0; big && i < 100003; i++) big[i] = (unsigned char)moexc_rng_below(&rng, 256);
        for (k = 0; big && k < sizeof(lengths) / sizeof(lengths[0]); k++) {
            uint32_t whole = moexc__crc32(0x12345678u, big, lengths[k]), pieces = 0x12345678u;
            for (i = 0; i < lengths[k]; i += piece)
                pieces = moexc__crc32(pieces, big + i, lengths[k] - i < piece ? lengths[k] - i : piece);
            TH_CHECK(whole == pieces, "CRC-32 of %lu bytes: 0x%08x in one call, 0x%08x in pieces",
                     (unsigned long)lengths[k], whole, pieces);
        }
        free(big);
    }
    memset(&t, 0, sizeof(t));
    moexc_tokens_add_domain(&t, "a", &a, &err);
    moexc_tokens_append_bytes(&t, "hi", 2, a, &err);
    TH_CHECK(moexc_tokens_save(&t, path, &err) == MOEXC_OK, "save: %s", err.message);
    bytes = slurp(path, &size);
    TH_CHECK(bytes && size == sizeof(want) + 4 && memcmp(bytes, want, sizeof(want)) == 0, "layout byte for byte (%d bytes)", (int)size);
    TH_CHECK(bytes && moexc__get_u32le(bytes + size - 4) == moexc__crc32(0, want, sizeof(want)), "trailing CRC-32 of the rest");
    free(bytes);
    TH_CHECK(moexc_tokens_load(&u, path, &err) == MOEXC_OK, "load: %s", err.message);
    TH_CHECK(u.n == 2 && u.tokens[0] == 'h' && u.tokens[1] == 'i' && u.domains[1] == 0 && u.n_domains == 1 &&
             strcmp(u.domain_names[0], "a") == 0 && u.vocab_size == 256, "loaded back");
    moexc_tokens_free(&u);
    moexc_tokens_free(&t);
    /* an empty stream is a valid file too */
    TH_CHECK(moexc_tokens_save(&t, path, &err) == MOEXC_OK && moexc_tokens_load(&u, path, &err) == MOEXC_OK &&
             u.n == 0 && u.vocab_size == 256, "empty stream: %s", err.message);
    moexc_tokens_free(&u);
    remove(path);
    TH_CHECK(g_live_blocks == live0, "no leak (%ld blocks)", g_live_blocks - live0);
}

static void test_token_file_hostile(void)
{
    moexc_tokens t, u;
    moexc_error err;
    unsigned char *img, *copy;
    size_t size, cut, byte;
    int d0, d1, bit, all = 1, named = 1;
    long live0 = g_live_blocks;
    const char *path = tmp_path("data_hostile.tok");
    memset(&t, 0, sizeof(t));
    moexc_tokens_add_domain(&t, "code", &d0, &err);
    moexc_tokens_add_domain(&t, "stories", &d1, &err);
    moexc_tokens_append_document(&t, "int x;", 6, d0, &err);
    moexc_tokens_append_document(&t, "Once.", 5, d1, &err);
    moexc_tokens_save(&t, path, &err);
    img = slurp(path, &size);
    TH_CHECK(img && size == 32 + 64 + 3 * 15 + 4, "size %d", (int)size);
    if (!img) return;
    copy = (unsigned char *)malloc(size);
    TH_CHECK(moexc_tokens_load_memory(&u, img, size, "ok.tok", &err) == MOEXC_OK && u.n == t.n &&
             memcmp(u.tokens, t.tokens, 2 * t.n) == 0 && memcmp(u.domains, t.domains, t.n) == 0, "valid image loads");
    moexc_tokens_free(&u);
    for (cut = 0; cut < size; cut++) {
        if (moexc_tokens_load_memory(&u, img, cut, "cut.tok", &err) == MOEXC_OK) { all = 0; moexc_tokens_free(&u); }
        else if (strncmp(err.message, "cut.tok: ", 9) != 0 || u.tokens != NULL) named = 0;
    }
    TH_CHECK(all, "every truncation rejected");
    TH_CHECK(named, "every message names the file, nothing left allocated");
    for (byte = 0; byte < size; byte++) {   /* CRC-32 catches every single-bit error */
        for (bit = 0; bit < 8; bit++) {
            memcpy(copy, img, size);
            copy[byte] ^= (unsigned char)(1u << bit);
            if (moexc_tokens_load_memory(&u, copy, size, "flip.tok", &err) == MOEXC_OK) { all = 0; moexc_tokens_free(&u); }
        }
    }
    TH_CHECK(all, "every single-bit flip rejected");
    /* each field, with the CRC made right again so the field check itself is hit */
    {
        static const struct { size_t offset; unsigned char value; moexc_status code; const char *msg; } cases[] = {
            { 0, 'X', MOEXC_ERR_FORMAT, "bad magic" },
            { 8, 2, MOEXC_ERR_VERSION, "version 2, this build reads version 1" },
            { 13, 0, MOEXC_ERR_FORMAT, "vocab_size 0 outside 1..65536" },
            { 14, 2, MOEXC_ERR_FORMAT, "vocab_size 131328 outside" },
            { 16, 17, MOEXC_ERR_FORMAT, "n_domains 17 above the maximum 16" },
            { 16, 3, MOEXC_ERR_FORMAT, "n_domains 3 imply" },
            { 20, 1, MOEXC_ERR_FORMAT, "flags 0x1" },
            { 24, 14, MOEXC_ERR_FORMAT, "n_tokens 14 and n_domains 2 imply" },
            { 31, 0x80, MOEXC_ERR_FORMAT, "imply 0 (truncated?)" },
            { 32, 0, MOEXC_ERR_FORMAT, "domain 0: name is empty" },
            { 64, 'c', MOEXC_ERR_FORMAT, "domain 1: duplicate name 'code'" },
            { 60, 'x', MOEXC_ERR_FORMAT, "domain 0: name padding is not zero" },
            { 96 + 2 * 3 + 1, 1, MOEXC_ERR_FORMAT, "token 3: id 288 >= vocab_size 256" },
            { 96 + 30 + 5, 2, MOEXC_ERR_FORMAT, "token 5: domain label 2 >= n_domains 2" },
        };
        size_t i;
        for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
            moexc_status st;
            memcpy(copy, img, size);
            if (cases[i].offset == 64) memcpy(copy + 64, "code\0\0\0", 8);
            else copy[cases[i].offset] = cases[i].value;
            fix_crc(copy, size);
            st = moexc_tokens_load_memory(&u, copy, size, "bad.tok", &err);
            TH_CHECK(st == cases[i].code && strstr(err.message, "bad.tok: ") && strstr(err.message, cases[i].msg),
                     "case %d: want '%s', got %s (%s)", (int)i, cases[i].msg, moexc_status_name(st), err.message);
            TH_CHECK(u.tokens == NULL && u.n == 0, "case %d leaves the struct empty", (int)i);
        }
        memcpy(copy, img, size);
        copy[100] ^= 1;
        TH_CHECK(moexc_tokens_load_memory(&u, copy, size, "crc.tok", &err) == MOEXC_ERR_CHECKSUM &&
                 strstr(err.message, "crc.tok: CRC-32"), "checksum: %s", err.message);
    }
    TH_CHECK(moexc_tokens_load(&u, "/nonexistent.tok", &err) == MOEXC_ERR_IO && strstr(err.message, "/nonexistent.tok"),
             "missing file: %s", err.message);
    {
        moexc_tokens bad = t;   /* a label out of range is refused on save */
        uint8_t saved = t.domains[0];
        t.domains[0] = 9;
        bad.domains = t.domains;
        TH_CHECK(moexc_tokens_save(&bad, path, &err) == MOEXC_ERR_ARG && strstr(err.message, "domain label 9"), "save validates");
        t.domains[0] = saved;
    }
    /* allocation failures while loading: clean NOMEM, no leak */
    {
        long k;
        int ok = 0, clean = 1;
        for (k = 0; k < 50 && !ok; k++) {
            moexc_status st;
            g_alloc_calls = 0;
            g_fail_at = k;
            st = moexc_tokens_load(&u, path, &err);
            if (st == MOEXC_OK) { ok = 1; moexc_tokens_free(&u); }
            else if (st != MOEXC_ERR_NOMEM || u.tokens) clean = 0;
        }
        g_fail_at = -1;
        TH_CHECK(ok && clean && k > 1, "load under allocation failures (%ld)", k);
    }
    free(copy);
    free(img);
    moexc_tokens_free(&t);
    remove(path);
    TH_CHECK(g_live_blocks == live0, "no leak (%ld blocks)", g_live_blocks - live0);
}

/* ---- the built-in corpus --------------------------------------------------- */
static double entropy_bits(const double *p)
{
    double h = 0;
    int k;
    for (k = 0; k < 256; k++) if (p[k] > 0) h -= p[k] * log2(p[k]);
    return h;
}

/* Count distinct words (runs of letters) in a domain, up to 4096. */
static int distinct_words(const moexc_tokens *t, int domain)
{
    static char words[4096][24];
    int n = 0, w;
    size_t i = 0;
    while (i < t->n) {
        char cur[24];
        int len = 0;
        while (i < t->n && !(t->domains[i] == domain && ((t->tokens[i] | 32) >= 'a' && (t->tokens[i] | 32) <= 'z'))) i++;
        while (i < t->n && t->domains[i] == domain && ((t->tokens[i] | 32) >= 'a' && (t->tokens[i] | 32) <= 'z')) {
            if (len < 23) cur[len++] = (char)(t->tokens[i] | 32);
            i++;
        }
        cur[len] = '\0';
        if (!len) continue;
        for (w = 0; w < n; w++) if (strcmp(words[w], cur) == 0) break;
        if (w == n && n < 4096) memcpy(words[n++], cur, sizeof(cur));
    }
    return n;
}

static void test_corpus(void)
{
    const size_t bytes = 300000;
    moexc_tokens t, u, v;
    moexc_error err;
    double p[3][256];
    size_t i, start[3] = { 0, 0, 0 };
    int d, k, docs[3] = { 0, 0, 0 }, bad_nesting = 0, bad_quotes = 0, bad_dollars = 0, bad_env = 0, bad_bytes = 0;
    long live0 = g_live_blocks;
    memset(&t, 0, sizeof(t));
    memset(&u, 0, sizeof(u));
    memset(&v, 0, sizeof(v));
    TH_CHECK(moexc_corpus_builtin(&t, bytes, 42, &err) == MOEXC_OK, "generate: %s", err.message);
    TH_CHECK(moexc_corpus_builtin(&u, bytes, 42, &err) == MOEXC_OK, "again");
    TH_CHECK(moexc_corpus_builtin(&v, bytes, 43, &err) == MOEXC_OK, "other seed");
    TH_CHECK(t.n == 3 * bytes && u.n == t.n && memcmp(t.tokens, u.tokens, 2 * t.n) == 0 &&
             memcmp(t.domains, u.domains, t.n) == 0, "same seed, same tokens and labels");
    for (d = 0; d < 3; d++) {
        size_t same = 0;
        for (i = d * bytes; i < (d + 1) * bytes && i < v.n; i++) same += t.tokens[i] == v.tokens[i];
        TH_CHECK(same < bytes / 2, "domain %d differs with another seed (%d of %d bytes equal)", d, (int)same, (int)bytes);
    }
    TH_CHECK(t.n_domains == 3 && strcmp(t.domain_names[0], "code") == 0 && strcmp(t.domain_names[1], "science") == 0 &&
             strcmp(t.domain_names[2], "stories") == 0 && t.vocab_size == 256, "domains");
    for (d = 0; d < 3; d++)
        TH_CHECK(moexc_tokens_domain_count(&t, d) == bytes, "domain %d has exactly %d bytes", d, (int)bytes);
    for (k = 1, i = 0; i < t.n; i++) k &= t.domains[i] == i / bytes;
    TH_CHECK(k, "labels: code, then science, then stories");

    /* per document: the separator, nesting and pairing rules of each domain */
    memset(p, 0, sizeof(p));
    for (d = 0; d < 3; d++) start[d] = (size_t)d * bytes;
    for (i = 0; i < t.n; i++) {
        int c = t.tokens[i];
        d = t.domains[i];
        p[d][c] += 1.0 / (double)bytes;
        if (!(c == '\n' || c == MOEXC_DOC_SEPARATOR || (c >= 32 && c < 127))) bad_bytes++;
        if (c == MOEXC_DOC_SEPARATOR) {   /* a complete document: [start[d], i) */
            int depth_brace = 0, depth_paren = 0, depth_bracket = 0, quotes = 0, dollars = 0, env = 0, neg = 0;
            size_t j;
            docs[d]++;
            TH_CHECK(i > 0 && t.tokens[i - 1] == '\n', "document ends with a newline before the separator");
            for (j = start[d]; j < i; j++) {
                int ch = t.tokens[j];
                if (d == 0 && ch == '/' && j + 1 < i && t.tokens[j + 1] == '*') {   /* skip comments */
                    while (j + 1 < i && !(t.tokens[j] == '*' && t.tokens[j + 1] == '/')) j++;
                    continue;
                }
                if (d == 0 && ch == '"') {   /* skip string literals */
                    for (j++; j < i && t.tokens[j] != '"'; j++) if (t.tokens[j] == '\\') j++;
                    continue;
                }
                depth_brace += (ch == '{') - (ch == '}');
                depth_paren += (ch == '(') - (ch == ')');
                depth_bracket += (ch == '[') - (ch == ']');
                neg |= depth_brace < 0 || depth_paren < 0 || depth_bracket < 0;
                quotes += ch == '"';
                dollars += ch == '$';
                if (ch == '\\' && j + 6 < i) {
                    static const uint16_t begin_[6] = { 'b', 'e', 'g', 'i', 'n', '{' }, end_[4] = { 'e', 'n', 'd', '{' };
                    if (memcmp(t.tokens + j + 1, begin_, sizeof(begin_)) == 0) env++;
                    if (memcmp(t.tokens + j + 1, end_, sizeof(end_)) == 0) env--;
                }
            }
            if (d == 0 && (depth_brace || depth_paren || depth_bracket || neg)) bad_nesting++;
            if (d == 1 && (depth_brace || neg || dollars % 2 || env)) {
                bad_dollars += dollars % 2 != 0; bad_env += env != 0; bad_nesting += depth_brace != 0 || neg; }
            if (d == 2 && quotes % 2) bad_quotes++;
            start[d] = i + 1;
        }
    }
    TH_CHECK(bad_bytes == 0, "only printable ASCII, newlines and separators (%d others)", bad_bytes);
    for (d = 0; d < 3; d++) TH_CHECK(docs[d] >= 20, "domain %d has many documents (%d)", d, docs[d]);
    TH_CHECK(bad_nesting == 0, "braces, parentheses and brackets balance in every code and science document (%d bad)", bad_nesting);
    TH_CHECK(bad_dollars == 0 && bad_env == 0, "inline math and environments close in every paper (%d, %d bad)", bad_dollars, bad_env);
    TH_CHECK(bad_quotes == 0, "dialogue quotes pair up in every story (%d bad)", bad_quotes);

    /* distinct byte statistics: entropies and pairwise KL divergence */
    {
        double h[3], kl_min = 1e9;
        int a, b;
        for (d = 0; d < 3; d++) h[d] = entropy_bits(p[d]);
        for (a = 0; a < 3; a++)
            for (b = 0; b < 3; b++) {
                double kl = 0;
                if (a == b) continue;
                for (k = 0; k < 256; k++) if (p[a][k] > 0) kl += p[a][k] * log2(p[a][k] / (p[b][k] > 0 ? p[b][k] : 1e-9));
                if (kl < kl_min) kl_min = kl;
            }
        printf("  unigram entropy (bits/byte): code %.3f, science %.3f, stories %.3f; smallest pairwise KL %.3f bits\n",
               h[0], h[1], h[2], kl_min);
        TH_CHECK(kl_min > 0.2, "domains differ in byte statistics (min KL %.3f bits)", kl_min);
        for (d = 0; d < 3; d++) TH_CHECK(h[d] > 3.5 && h[d] < 5.5, "domain %d entropy %.3f in a text-like range", d, h[d]);
    }
    {
        int w0 = distinct_words(&t, 0), w1 = distinct_words(&t, 1), w2 = distinct_words(&t, 2);
        printf("  distinct words: code %d, science %d, stories %d\n", w0, w1, w2);
        TH_CHECK(w0 >= 150 && w1 >= 300 && w2 >= 250, "hundreds of distinct words per domain");
    }
    moexc_tokens_free(&t);
    moexc_tokens_free(&u);
    moexc_tokens_free(&v);
    /* small sizes, zero bytes, and appending to an existing stream */
    TH_CHECK(moexc_corpus_builtin(&t, 0, 1, &err) == MOEXC_OK && t.n == 0 && t.n_domains == 3, "zero bytes");
    TH_CHECK(moexc_corpus_builtin(&t, 7, 1, &err) == MOEXC_OK && t.n == 21 && t.n_domains == 3, "appends, reusing the domains");
    moexc_tokens_free(&t);
    TH_CHECK(g_live_blocks == live0, "no leak (%ld blocks)", g_live_blocks - live0);
}

static void test_corpus_allocation_failures(void)
{
    moexc_tokens t;
    moexc_error err;
    long k, live0 = g_live_blocks;
    int ok = 0, clean = 1;
    for (k = 0; k < 400 && !ok; k++) {
        moexc_status st;
        memset(&t, 0, sizeof(t));
        g_alloc_calls = 0;
        g_fail_at = k;
        st = moexc_corpus_builtin(&t, 5000, 3, &err);
        g_fail_at = -1;
        if (st == MOEXC_OK) ok = 1;
        else if (st != MOEXC_ERR_NOMEM) clean = 0;
        moexc_tokens_free(&t);
        if (g_live_blocks != live0) clean = 0;
    }
    TH_CHECK(ok, "eventually succeeds (%ld)", k);
    TH_CHECK(clean && k > 5, "every injected failure is a clean MOEXC_ERR_NOMEM (%ld allocation sites)", k - 1);
}

/* The generator's output is pinned, so that a host or compiler that produces
   different bytes (argument evaluation order, char signedness, rounding) is
   caught: a token file written by moexc_mkdata and a CRC-32 of a larger run.
   After a deliberate change to the generator, regenerate both:
     build/moexc_mkdata --builtin 40 --seed 1 --out tests/fixtures/data_small.tok
   and update CORPUS_CRC from the failure message. */
#define CORPUS_CRC 0x3A5EB887u
static const char *fixture(const char *name)
{
    static char buf[1024];
    FILE *f;
    snprintf(buf, sizeof(buf), "tests/fixtures/%s", name);
    if ((f = fopen(buf, "rb")) != NULL) { fclose(f); return buf; }
    snprintf(buf, sizeof(buf), "../tests/fixtures/%s", name);
    return buf;
}

static void test_corpus_golden(void)
{
    moexc_tokens t, fx;
    moexc_error err;
    size_t i;
    uint32_t crc = 0;
    long live0 = g_live_blocks;
    memset(&t, 0, sizeof(t));
    TH_CHECK(moexc_tokens_load(&fx, fixture("data_small.tok"), &err) == MOEXC_OK, "committed token file loads: %s", err.message);
    TH_CHECK(moexc_corpus_builtin(&t, 40, 1, &err) == MOEXC_OK, "%s", err.message);
    TH_CHECK(fx.n == t.n && fx.n_domains == 3 && t.n == 120 && memcmp(fx.tokens, t.tokens, 2 * t.n) == 0 &&
             memcmp(fx.domains, t.domains, t.n) == 0 && strcmp(fx.domain_names[2], "stories") == 0,
             "the committed file equals a fresh generation");
    moexc_tokens_free(&fx);
    moexc_tokens_free(&t);
    TH_CHECK(moexc_corpus_builtin(&t, 100000, 1, &err) == MOEXC_OK, "%s", err.message);
    for (i = 0; i < t.n; i++) {
        unsigned char b[2];
        b[0] = (unsigned char)t.tokens[i];
        b[1] = (unsigned char)(t.tokens[i] >> 8);
        crc = moexc__crc32(crc, b, 2);
    }
    TH_CHECK(crc == CORPUS_CRC, "CRC-32 of 3 x 100000 generated bytes is 0x%08X, pinned 0x%08X", crc, CORPUS_CRC);
    moexc_tokens_free(&t);
    TH_CHECK(g_live_blocks == live0, "no leak");
}

static void test_corpus_sample(void)
{
    moexc_tokens t;
    moexc_error err;
    int d;
    memset(&t, 0, sizeof(t));
    TH_CHECK(moexc_corpus_builtin(&t, 600, 7, &err) == MOEXC_OK, "%s", err.message);
    for (d = 0; d < 3; d++) {
        size_t i, shown = 0;
        printf("  --- %s sample ---\n  ", t.domain_names[d]);
        for (i = 0; i < t.n && shown < 240; i++) {
            if (t.domains[i] != d) continue;
            putchar(t.tokens[i] == '\n' ? '\n' : t.tokens[i]);
            if (t.tokens[i] == '\n') printf("  ");
            shown++;
        }
        printf("\n");
    }
    moexc_tokens_free(&t);
}

int main(int argc, char **argv)
{
    (void)argc;
    tmp_dir_from_argv0(argv[0]);
    TH_RUN(test_tokens_basics);
    TH_RUN(test_token_file_bytes);
    TH_RUN(test_token_file_hostile);
    TH_RUN(test_corpus);
    TH_RUN(test_corpus_allocation_failures);
    TH_RUN(test_corpus_golden);
    TH_RUN(test_corpus_sample);
    return th_summary();
}
