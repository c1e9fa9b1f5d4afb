/* moexc_mkdata - build a moexc token file (byte tokens with a domain label
   per token) from files and directories, or from the built-in corpus.

     moexc_mkdata --domain code=src/ --domain science=papers/ --domain stories=tales.txt --out data.tok
     moexc_mkdata --builtin 2000000 --seed 1 --out data.tok

   Each file is one document (see MOEXC_DOC_SEPARATOR); directories are walked
   recursively in sorted order, skipping hidden entries and binary files
   (files containing a NUL byte). Prints the bytes and documents per domain. */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif
#include "../moexc.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if !defined(_WIN32)
#include <dirent.h>
#include <sys/stat.h>
#define MKDATA_HAVE_DIRS 1
#endif

typedef struct mkdata_stats {
    size_t docs[MOEXC_MAX_DOMAINS], skipped;
} mkdata_stats;

static void usage(FILE *out)
{
    fprintf(out,
        "usage: moexc_mkdata (--domain NAME=PATH ... | --builtin BYTES [--seed S]) --out FILE\n"
        "\n"
        "Build a moexc token file: byte tokens (vocabulary 256), each labelled with\n"
        "its domain, in the format read by moexc_tokens_load.\n"
        "\n"
        "  --domain NAME=PATH   add PATH to domain NAME (repeatable; up to %d domains).\n"
        "                       PATH is a file or a directory (walked recursively in\n"
        "                       sorted order; hidden entries and files with NUL bytes\n"
        "                       are skipped). Each file is one document.\n"
        "  --builtin BYTES      the built-in corpus: BYTES bytes each of generated\n"
        "                       code, science and stories\n"
        "  --seed S             seed of the built-in corpus (default 1)\n"
        "  --out FILE           output file (written atomically)\n"
        "  --help               this text\n",
        MOEXC_MAX_DOMAINS);
}

static int read_whole(const char *path, unsigned char **data, size_t *size)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    size_t len = 0, cap = 0, got;
    *data = NULL;
    *size = 0;
    if (!f) return 0;
    do {
        if (len == cap) {
            unsigned char *p;
            cap = cap ? 2 * cap : 65536;
            p = (unsigned char *)realloc(buf, cap);
            if (!p) { free(buf); fclose(f); return 0; }
            buf = p;
        }
        got = fread(buf + len, 1, cap - len, f);
        len += got;
    } while (got > 0);
    if (ferror(f)) { free(buf); fclose(f); return 0; }
    fclose(f);
    *data = buf;
    *size = len;
    return 1;
}

static int add_file(moexc_tokens *t, int domain, const char *path, mkdata_stats *st)
{
    unsigned char *data;
    size_t size;
    moexc_error err;
    if (!read_whole(path, &data, &size)) {
        fprintf(stderr, "moexc_mkdata: %s: cannot read\n", path);
        return 0;
    }
    if (memchr(data, 0, size)) {   /* binary */
        st->skipped++;
        free(data);
        return 1;
    }
    if (moexc_tokens_append_document(t, data, size, domain, &err) != MOEXC_OK) {
        fprintf(stderr, "moexc_mkdata: %s: %s\n", path, err.message);
        free(data);
        return 0;
    }
    st->docs[domain]++;
    free(data);
    return 1;
}

#ifdef MKDATA_HAVE_DIRS
static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int add_path(moexc_tokens *t, int domain, const char *path, mkdata_stats *st, int depth)
{
    struct stat sb;
    DIR *dir;
    struct dirent *e;
    char **names = NULL;
    size_t n = 0, cap = 0, i;
    int ok = 1;
    if (stat(path, &sb) != 0) { fprintf(stderr, "moexc_mkdata: %s: no such file or directory\n", path); return 0; }
    if (S_ISREG(sb.st_mode)) return add_file(t, domain, path, st);
    if (!S_ISDIR(sb.st_mode)) return 1;   /* sockets, devices: ignored */
    if (depth > 64) { fprintf(stderr, "moexc_mkdata: %s: directories nested too deep (symlink loop?)\n", path); return 0; }
    if (!(dir = opendir(path))) { fprintf(stderr, "moexc_mkdata: %s: cannot open directory\n", path); return 0; }
    while ((e = readdir(dir)) != NULL) {
        size_t len;
        if (e->d_name[0] == '.') continue;   /* ., .., hidden */
        if (n == cap) {
            char **p = (char **)realloc(names, (cap = cap ? 2 * cap : 64) * sizeof(*names));
            if (!p) { ok = 0; break; }
            names = p;
        }
        len = strlen(path) + strlen(e->d_name) + 2;
        if (!(names[n] = (char *)malloc(len))) { ok = 0; break; }
        snprintf(names[n], len, "%s/%s", path, e->d_name);
        n++;
    }
    closedir(dir);
    if (!ok) fprintf(stderr, "moexc_mkdata: %s: out of memory\n", path);
    qsort(names, n, sizeof(*names), cmp_names);   /* deterministic order */
    for (i = 0; i < n; i++) {
        if (ok) ok = add_path(t, domain, names[i], st, depth + 1);
        free(names[i]);
    }
    free(names);
    return ok;
}
#else
static int add_path(moexc_tokens *t, int domain, const char *path, mkdata_stats *st, int depth)
{
    (void)depth;
    return add_file(t, domain, path, st);   /* directories need POSIX opendir */
}
#endif

int main(int argc, char **argv)
{
    moexc_tokens t;
    moexc_error err;
    mkdata_stats st;
    const char *out = NULL;
    unsigned long long builtin = 0, seed = 1;
    int i, d, have_builtin = 0, have_domains = 0;
    memset(&t, 0, sizeof(t));
    memset(&st, 0, sizeof(st));
    for (i = 1; i < argc; i++) {   /* first pass: options */
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) { usage(stdout); return 0; }
        if (strcmp(a, "--domain") == 0 || strcmp(a, "--builtin") == 0 || strcmp(a, "--seed") == 0 || strcmp(a, "--out") == 0) {
            char *end;
            if (i + 1 >= argc) { fprintf(stderr, "moexc_mkdata: %s needs a value (see --help)\n", a); return 2; }
            if (strcmp(a, "--out") == 0) out = argv[i + 1];
            else if (strcmp(a, "--domain") == 0) have_domains = 1;
            else {
                unsigned long long v = strtoull(argv[i + 1], &end, 10);
                if (*argv[i + 1] == '\0' || *argv[i + 1] == '-' || *end != '\0') {
                    fprintf(stderr, "moexc_mkdata: %s: '%s' is not a non-negative integer\n", a, argv[i + 1]);
                    return 2;
                }
                if (strcmp(a, "--builtin") == 0) { builtin = v; have_builtin = 1; } else seed = v;
            }
            i++;
            continue;
        }
        fprintf(stderr, "moexc_mkdata: unknown argument '%s' (see --help)\n", a);
        return 2;
    }
    if (!out) { fprintf(stderr, "moexc_mkdata: --out FILE is required (see --help)\n"); return 2; }
    if (have_builtin == have_domains) {
        fprintf(stderr, "moexc_mkdata: give either --domain NAME=PATH (one or more) or --builtin BYTES\n");
        return 2;
    }
    if (moexc_check_writable(out, &err) != MOEXC_OK) { fprintf(stderr, "moexc_mkdata: --out: %s\n", err.message); return 1; }
    if (have_builtin) {
        clock_t c0 = clock();
        if (moexc_corpus_builtin(&t, (size_t)builtin, (uint64_t)seed, &err) != MOEXC_OK) {
            fprintf(stderr, "moexc_mkdata: %s\n", err.message);
            return 1;
        }
        printf("built-in corpus, seed %llu: generated in %.3f s\n", seed, (double)(clock() - c0) / CLOCKS_PER_SEC);
    }
    for (i = 1; i < argc; i++) {   /* second pass: domains, in command-line order */
        char name[MOEXC_DOMAIN_NAME_MAX];
        const char *eq;
        int index;
        if (strcmp(argv[i], "--domain") != 0) { if (strcmp(argv[i], "--help") != 0) i++; continue; }
        eq = strchr(argv[++i], '=');
        if (!eq || eq == argv[i] || eq[1] == '\0') {
            fprintf(stderr, "moexc_mkdata: --domain '%s': expected NAME=PATH\n", argv[i]);
            moexc_tokens_free(&t);
            return 2;
        }
        if ((size_t)(eq - argv[i]) >= sizeof(name)) {
            fprintf(stderr, "moexc_mkdata: --domain '%s': name longer than %d bytes\n", argv[i], MOEXC_DOMAIN_NAME_MAX - 1);
            moexc_tokens_free(&t);
            return 2;
        }
        memcpy(name, argv[i], (size_t)(eq - argv[i]));
        name[eq - argv[i]] = '\0';
        if (moexc_tokens_add_domain(&t, name, &index, &err) != MOEXC_OK) {
            fprintf(stderr, "moexc_mkdata: --domain '%s': %s\n", argv[i], err.message);
            moexc_tokens_free(&t);
            return 2;
        }
        if (!add_path(&t, index, eq + 1, &st, 0)) { moexc_tokens_free(&t); return 1; }
    }
    for (d = 0; d < t.n_domains; d++) {
        size_t bytes = moexc_tokens_domain_count(&t, d);
        if (have_builtin) printf("  %-31s %12lu bytes\n", t.domain_names[d], (unsigned long)bytes);
        else printf("  %-31s %12lu bytes in %lu documents\n", t.domain_names[d], (unsigned long)bytes, (unsigned long)st.docs[d]);
        if (bytes == 0) fprintf(stderr, "moexc_mkdata: warning: domain '%s' is empty\n", t.domain_names[d]);
    }
    if (st.skipped) printf("  skipped %lu binary files\n", (unsigned long)st.skipped);
    if (moexc_tokens_save(&t, out, &err) != MOEXC_OK) {
        fprintf(stderr, "moexc_mkdata: %s\n", err.message);
        moexc_tokens_free(&t);
        return 1;
    }
    printf("wrote %s: %lu tokens, %d domains\n", out, (unsigned long)t.n, t.n_domains);
    moexc_tokens_free(&t);
    return 0;
}
