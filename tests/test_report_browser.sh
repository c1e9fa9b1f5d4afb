#!/bin/sh
# tests/test_report_browser.sh - the study's web page in a real browser.
# Renders two pages in headless Chromium: the tiny demo's report/index.html,
# and one that tools/moexc_report builds from the demo's models and
# crosscoder over a corpus laced with hostile HTML (script tags, event
# handlers, a hostile domain name, control bytes, invalid UTF-8). Checks the
# rendered DOM (latent cards, contexts, the tables; exactly our one script,
# no element or attribute that came from the corpus, the title unchanged,
# the hostile text shown as text) and that a screenshot is not blank.
# Where Chromium cannot run, prints "SKIPPED: <why>" and counts nothing as
# passed for the browser part. Run from the repository root after
# `make build/moexc_demo build/moexc_report build/moexc_mkdata`.
BUILD=${BUILD:-build}
PY=${PYTHON:-python3}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/moexc_page.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT
passed=0
failed=0
ok()  { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }
finish() { echo "$passed passed, $failed failed"; [ "$failed" -eq 0 ]; exit $?; }

# ---- the pages ---------------------------------------------------------------
if OMP_WAIT_POLICY=passive "$BUILD/moexc_demo" --preset tiny --out "$TMP/r" >"$TMP/demo.out" 2>&1; then ok "tiny demo"
else bad "tiny demo: $(tail -n 2 "$TMP/demo.out")"; finish; fi
[ -s "$TMP/r/index.html" ] && [ -s "$TMP/r/expert_purity.png" ] && ok "demo wrote index.html and expert_purity.png" \
    || bad "demo wrote index.html and expert_purity.png"
grep -q "loss recovered" "$TMP/r/index.html" && ok "spliced-loss table in the page" || bad "spliced-loss table in the page"
if "$BUILD/moexc_report" --help | grep -q "usage: moexc_report"; then ok "moexc_report --help"; else bad "moexc_report --help"; fi
if "$BUILD/moexc_report" --tokens "$TMP/r/corpus.tok" --moe "$TMP/r/moe.ckpt" --dense "$TMP/r/dense.ckpt" \
    --xc "$TMP/r/crosscoder.safetensors" --out /proc/nonexistent/x >/dev/null 2>"$TMP/err"; then bad "unwritable --out refused"
elif grep -q "nonexistent" "$TMP/err"; then ok "unwritable --out refused early: $(head -n 1 "$TMP/err")"
else bad "unwritable --out: $(head -n 1 "$TMP/err")"; fi

mkdir -p "$TMP/web" "$TMP/notes"
i=0
while [ $i -lt 40 ]; do
    printf 'Welcome %d </script><script>document.title="PWNED";document.body.setAttribute("data-pwned","1")</script>\n' $i >>"$TMP/web/a.html"
    printf '<img src=x onerror="document.body.setAttribute(%s,1)"> <b>bold</b> & &amp; "quotes" %d\n' "'data-pwned'" $i >>"$TMP/web/a.html"
    printf 'ctl \001\002\033[31m bad utf8 \377\376\300\257 end %d\n' $i >>"$TMP/web/b.txt"
    printf 'Plain notes about the weather, day %d, with <i>tags</i> and </div></div> closers.\n' $i >>"$TMP/notes/n.txt"
    i=$((i + 1))
done
if "$BUILD/moexc_mkdata" --domain "w<b>eb=$TMP/web" --domain "notes=$TMP/notes" --out "$TMP/hostile.tok" >"$TMP/mk.out" 2>&1; then
    ok "hostile corpus (moexc_mkdata)"
else bad "hostile corpus: $(tail -n 1 "$TMP/mk.out")"; finish; fi
mkdir -p "$TMP/h"
if "$BUILD/moexc_report" --tokens "$TMP/hostile.tok" --moe "$TMP/r/moe.ckpt" --dense "$TMP/r/dense.ckpt" \
    --xc "$TMP/r/crosscoder.safetensors" --out "$TMP/h" --seq-len 48 --seqs 16 --eval-fraction 0.5 \
    --title "hostile corpus" >"$TMP/rep.out" 2>&1; then ok "moexc_report on the hostile corpus"
else bad "moexc_report on the hostile corpus: $(tail -n 2 "$TMP/rep.out")"; finish; fi

# ---- the browser -------------------------------------------------------------
CHROME=""
for c in chromium chromium-browser google-chrome; do
    if command -v "$c" >/dev/null 2>&1; then CHROME=$c; break; fi
done
if [ -z "$CHROME" ]; then echo "SKIPPED: no chromium on PATH (Debian: apt-get install chromium)"; finish; fi
if ! command -v "$PY" >/dev/null 2>&1; then echo "SKIPPED: no $PY to read the DOM and the screenshot"; finish; fi
render() { # page, dom out, png out
    prof=$(mktemp -d "$TMP/profile.XXXXXX")
    set -- "$1" "$2" "$3" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync --user-data-dir="$prof"
    page=$1; dom=$2; png=$3; shift 3
    timeout 120 "$CHROME" "$@" --dump-dom "file://$page" >"$dom" 2>"$TMP/chrome.err" || return 1
    prof2=$(mktemp -d "$TMP/profile.XXXXXX")
    timeout 120 "$CHROME" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync --user-data-dir="$prof2" \
        --window-size=1280,1600 --screenshot="$png" "file://$page" >/dev/null 2>>"$TMP/chrome.err" || return 1
    [ -s "$dom" ] && [ -s "$png" ]
}
if ! render "$TMP/r/index.html" "$TMP/r.dom" "$TMP/r.png"; then
    echo "SKIPPED: $CHROME could not render a page here: $(grep -v dbus "$TMP/chrome.err" | tail -n 1)"; finish
fi
ok "chromium rendered the demo's page"
if render "$TMP/h/index.html" "$TMP/h.dom" "$TMP/h.png"; then ok "chromium rendered the hostile page"
else bad "chromium on the hostile page: $(tail -n 1 "$TMP/chrome.err")"; finish; fi

cat >"$TMP/check.py" <<'PYEOF'
import sys, zlib, struct
from html.parser import HTMLParser

class P(HTMLParser):
    def __init__(s):
        super().__init__(convert_charrefs=True)
        s.tags = {}; s.attrs_on = []; s.imgs = []; s.cards = []; s.ctx = 0; s.text = []; s.title = None
        s.in_title = False; s.ids = set(); s.body_attrs = {}
    def handle_starttag(s, tag, attrs):
        s.tags[tag] = s.tags.get(tag, 0) + 1
        a = dict(attrs)
        for k, v in attrs:
            if k.lower().startswith('on'): s.attrs_on.append((tag, k))
        if tag == 'img': s.imgs.append(a.get('src', ''))
        if tag == 'div' and a.get('class') == 'card': s.cards.append(a.get('data-cls'))
        if tag == 'div' and a.get('class') == 'ctx': s.ctx += 1
        if tag == 'title': s.in_title = True
        if tag == 'body': s.body_attrs = a
        if 'id' in a: s.ids.add(a['id'])
    def handle_endtag(s, tag):
        if tag == 'title': s.in_title = False
    def handle_data(s, d):
        if s.in_title: s.title = (s.title or '') + d
        s.text.append(d)

def distinct_colours(path):
    data = open(path, 'rb').read()
    assert data[:8] == b'\x89PNG\r\n\x1a\n'
    pos, idat, w = 8, b'', 0
    while pos < len(data):
        n, typ = struct.unpack('>I4s', data[pos:pos + 8]); body = data[pos + 8:pos + 8 + n]; pos += 12 + n
        if typ == b'IHDR': w, h, depth, ctype = struct.unpack('>IIBB', body[:10])
        elif typ == b'IDAT': idat += body
    bpp = {2: 3, 6: 4}[ctype]; raw = zlib.decompress(idat); stride = w * bpp
    prev = bytearray(stride); colours = set(); i = 0
    for y in range(h):
        f = raw[i]; line = bytearray(raw[i + 1:i + 1 + stride]); i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0; b = prev[x]; c = prev[x - bpp] if x >= bpp else 0
            if f == 1: line[x] = (line[x] + a) & 255
            elif f == 2: line[x] = (line[x] + b) & 255
            elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        if y % 4 == 0:
            for x in range(0, stride, bpp * 2): colours.add(bytes(line[x:x + 3]))
        prev = line
    return len(colours)

kind, dom, png, title = sys.argv[1:5]
p = P(); p.feed(open(dom, encoding='utf-8', errors='replace').read())
text = ''.join(p.text)
res = []
def check(cond, what): res.append((bool(cond), what))
check(p.title == title, 'title unchanged: %r' % p.title)
check(p.tags.get('script', 0) == 1, 'exactly one script element (ours): %d' % p.tags.get('script', 0))
check(not p.attrs_on, 'no event-handler attribute: %s' % p.attrs_on[:3])
check(all(s.endswith('.png') and '/' not in s for s in p.imgs), 'images are the PNGs beside the page: %s' % [s for s in p.imgs if not s.endswith('.png')][:3])
check('data-pwned' not in p.body_attrs and 'PWNED' not in (p.title or ''), 'no corpus script ran')
for t in ('b', 'i', 'iframe', 'object', 'embed'):
    check(p.tags.get(t, 0) == 0, 'no <%s> element from the corpus: %d' % (t, p.tags.get(t, 0)))
check(len(p.cards) >= 3, 'latent cards: %d' % len(p.cards))
check(p.ctx >= len(p.cards), 'contexts: %d for %d cards' % (p.ctx, len(p.cards)))
check({'summary', 'classes', 'splice', 'cards', 'q', 'fc', 'so'} <= p.ids, 'summary, class and spliced-loss tables, controls')
if kind == 'demo':
    check(len(set(p.cards)) >= 2, 'cards of %d classes' % len(set(p.cards)))
    check(len(p.imgs) >= 5 and 'expert_purity.png' in p.imgs, '%d plots incl. expert_purity.png' % len(p.imgs))
else:
    check('<script>' in text or '</script>' in text, 'hostile <script> shown as text')
    check('onerror=' in text, 'hostile <img onerror> shown as text')
    check('w<b>eb' in text, 'hostile domain name shown as text')
    check('\\xFF' in text or '\\x01' in text, 'control bytes / invalid UTF-8 shown as escapes')
n = distinct_colours(png)
check(n >= 8, 'screenshot not blank: %d distinct colours' % n)
for good, what in res: print(('ok   ' if good else 'FAIL ') + kind + ': ' + what)
PYEOF
for k in demo hostile; do
    if [ $k = demo ]; then dom="$TMP/r.dom"; png="$TMP/r.png"; t="moexc study: MoE vs dense through a crosscoder (preset tiny)"
    else dom="$TMP/h.dom"; png="$TMP/h.png"; t="hostile corpus"; fi
    "$PY" "$TMP/check.py" $k "$dom" "$png" "$t" >"$TMP/check.out" 2>&1 || echo "FAIL $k: checker crashed: $(tail -n 1 "$TMP/check.out")" >>"$TMP/check.out"
    cat "$TMP/check.out"
    passed=$((passed + $(grep -c '^ok ' "$TMP/check.out")))
    failed=$((failed + $(grep -c '^FAIL' "$TMP/check.out")))
done
finish
