/* tests/fuzz_json.c - libFuzzer harness for the JSON parser under the
   safetensors header and for the metadata layer the loaders read their
   configs through (numbers in a range, exact unsigned and signed 64-bit
   integers).
     - The input is parsed as JSON text; a parse either fails with a message
       naming the input or gives a tree whose links and counts agree.
     - The input up to its first NUL is a metadata value: a number read back
       lies in its range, an integer read back prints as the same digits (no
       silent overflow), and the unsigned reader agrees with strtoull where
       strtoull reports no overflow. */
#include "fuzz_common.h"
#include <errno.h>

static void check_tree(const moexc__json *js, int i, int depth)
{
    const moexc__jnode *nd = &js->nodes[i];
    int c, n = 0;
    if (depth > MOEXC__JSON_MAX_DEPTH + 1 || nd->type < MOEXC__JNULL || nd->type > MOEXC__JOBJECT) abort();
    for (c = nd->first; c >= 0; c = js->nodes[c].next) {
        if (c <= i || c >= js->n_nodes) abort();                         /* children come after their parent */
        if ((nd->type == MOEXC__JOBJECT) != (js->nodes[c].key != NULL)) abort();
        check_tree(js, c, depth + 1);
        n++;
    }
    if (n != nd->count) abort();
    if (nd->type == MOEXC__JSTRING && nd->str[nd->len] != '\0') abort();   /* decoded in place, NUL-terminated */
}

static void check_meta(const char *value)
{
    moexc_st_file f;
    const char *kv[2];
    moexc_error err;
    double x;
    uint64_t u;
    int64_t v;
    char back[32];
    memset(&f, 0, sizeof(f));
    kv[0] = "k"; kv[1] = value;
    f.meta = kv; f.n_meta = 1;
    if (moexc__st_meta_number(&f, "fuzz", "k", -1e6, 1e6, &x, &err) == MOEXC_OK) {
        if (!(x >= -1e6 && x <= 1e6)) abort();
    } else {
        fuzz_check_message(&err, "fuzz");
    }
    if (moexc__st_meta_u64(&f, "fuzz", "k", &u, &err) == MOEXC_OK) {
        const char *p = value;
        while (*p == '0' && p[1]) p++;                                  /* leading zeros are allowed */
        snprintf(back, sizeof(back), "%llu", (unsigned long long)u);
        if (strcmp(back, p) != 0) abort();
    } else {
        fuzz_check_message(&err, "fuzz");
        if (value[0] >= '0' && value[0] <= '9' && strspn(value, "0123456789") == strlen(value)) {
            errno = 0;
            (void)strtoull(value, NULL, 10);
            if (errno != ERANGE) abort();                                /* rejected only on overflow */
        }
    }
    if (moexc__st_meta_i64(&f, "fuzz", "k", -1000, INT64_MAX, &v, &err) == MOEXC_OK) {
        if (v < -1000) abort();
        snprintf(back, sizeof(back), "%lld", (long long)v);
        if (value[0] != '0' && value[0] != '-' && strcmp(back, value) != 0) abort();
    } else {
        fuzz_check_message(&err, "fuzz");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    moexc__json js;
    moexc_error err;
    char *text = (char *)malloc(size + 1);
    if (size) memcpy(text, data, size);
    text[size] = '\0';
    check_meta(text);                                                   /* up to the first NUL */
    if (moexc__json_parse(&js, text, size, "fuzz", &err) == MOEXC_OK) {
        if (js.n_nodes < 1) abort();
        check_tree(&js, 0, 0);
    } else {
        fuzz_check_message(&err, "fuzz");
    }
    moexc__free(js.nodes);
    free(text);
    return 0;
}
