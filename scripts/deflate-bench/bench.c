/*
 * bench.c: zlib deflate vs ISA-L igzip for VNC's persistent deflate streams.
 *
 * Every rectangle of an input is compressed on ONE stream per method, with a
 * sync flush at the end of each rectangle (raw deflate, xenvfb writes the 0x78
 * 0x01 zlib header itself). The output is checked with ONE zlib inflate stream
 * fed rectangle by rectangle, as a VNC client does.
 *
 *   gcc -O2 -Wall -o bench bench.c -lz -lisal
 *   ./bench            all checks + timings (best of 3, each >= 1 s CPU)
 *   ./bench verify     checks only
 *   ./bench quick      checks without the small-output-buffer reruns (for qemu-x86_64 -cpu ...)
 *   ./bench wrap       total_in past 4 GiB on one stream (slow)
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>
#include <isa-l/igzip_lib.h>

/* ------------------------------------------------------------------ inputs */

typedef struct { uint8_t *data; size_t len; } Rect;
typedef struct {
    const char *name;
    Rect *rects;
    int n, cap;
    size_t total;
} Input;

static void add_rect(Input *in, const uint8_t *p, size_t len) {
    if (in->n == in->cap) {
        in->cap = in->cap ? in->cap * 2 : 64;
        in->rects = realloc(in->rects, sizeof(Rect) * in->cap);
    }
    Rect *r = &in->rects[in->n++];
    r->data = malloc(len);
    memcpy(r->data, p, len);
    r->len = len;
    in->total += len;
}

/* xenvfb's Session.startUpdate: width 800 -> min(64, 32768/800)=40 rows,
 * rounded down to a multiple of 16 -> 800x32 rectangles (25600 pixels). */
#define W 800
#define RECT_ROWS 32

/* Splits a W x h frame of bpp bytes per pixel into RECT_ROWS-row rectangles. */
static void add_frame(Input *in, const uint8_t *frame, int h, int bpp) {
    for (int y = 0; y < h; y += RECT_ROWS) {
        int rows = h - y < RECT_ROWS ? h - y : RECT_ROWS;
        add_rect(in, frame + (size_t)y * W * bpp, (size_t)rows * W * bpp);
    }
}

static inline void put(uint8_t *f, int x, int y, uint32_t rgb) {
    uint8_t *p = f + ((size_t)y * W + x) * 3;
    p[0] = rgb >> 16; p[1] = rgb >> 8; p[2] = rgb;
}

static uint64_t rng_state = 0x243F6A8885A308D3ull;
static uint32_t rnd(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717ull) >> 32);
}
static uint32_t hash2(uint32_t a, uint32_t b) {
    uint32_t h = a * 0x9E3779B1u ^ (b + 0x7F4A7C15u) * 0x85EBCA77u;
    h ^= h >> 15; h *= 0xC2B2AE3Du; h ^= h >> 13;
    return h;
}

/* (1a) 800x160: 8 vertical colour bars (75% SMPTE-like), each with a
 * horizontal brightness ramp, a 1-pixel-wide column pattern (every other
 * column brighter) and mild noise; frame k is the picture shifted by 4k px. */
static Input gen_bars(void) {
    Input in = { .name = "bars" };
    static const uint32_t bars[8] = { 0xbfbfbf, 0xbfbf00, 0x00bfbf, 0x00bf00,
                                      0xbf00bf, 0xbf0000, 0x0000bf, 0x202020 };
    uint8_t *f = malloc(W * 160 * 3);
    for (int k = 0; k < 8; k++) {
        for (int y = 0; y < 160; y++)
            for (int x = 0; x < W; x++) {
                int xs = (x + 4 * k) % W;
                uint32_t c = bars[xs / 100];
                int ramp = 60 + (xs % 100) * 40 / 100 + y / 8; /* 60..119 % */
                int stripe = (xs & 1) ? 12 : 0;
                int noise = (int)(hash2(xs, y) & 7) - 3;
                uint32_t out = 0;
                for (int s = 16; s >= 0; s -= 8) {
                    int v = (int)((c >> s) & 0xff) * ramp / 100 + stripe + noise;
                    if (v < 0) v = 0;
                    if (v > 255) v = 255;
                    out |= (uint32_t)v << s;
                }
                put(f, x, y, out);
            }
        add_frame(&in, f, 160, 3);
    }
    free(f);
    return in;
}

/* (1b) BackendBench's "band" workload (the real-Xen test animation):
 * 800x160, R=(3x+41n), G=(5y+13n), B=(x+y+n), 8 frames. */
static Input gen_band(void) {
    Input in = { .name = "band-xen" };
    uint8_t *f = malloc(W * 160 * 3);
    for (int n = 0; n < 8; n++) {
        for (int y = 0; y < 160; y++)
            for (int x = 0; x < W; x++)
                put(f, x, y, ((uint32_t)((x * 3 + n * 41) & 0xff) << 16)
                           | ((uint32_t)((y * 5 + n * 13) & 0xff) << 8)
                           | (uint32_t)((x + y + n) & 0xff));
        add_frame(&in, f, 160, 3);
    }
    free(f);
    return in;
}

/* 8x16 glyph cell as BackendBench's Painter.glyph: rows 2..13, columns 1..6. */
static void glyph(uint8_t *f, int bpp, int x, int y, uint64_t seed, uint32_t colour) {
    uint64_t bits = seed * 0x9E3779B97F4A7C15ull;
    for (int j = 2; j < 14; j++) {
        bits = bits * 6364136223846793005ull + 1442695040888963407ull;
        for (int i = 1; i < 7; i++)
            if ((bits >> (i + 20)) & 1) {
                if (bpp == 3) put(f, x + i, y + j, colour);
                else f[(size_t)(y + j) * W + x + i] = (uint8_t)colour;
            }
    }
}

/* (2) 800x600 terminal (BackendBench "terminal"): black, 0xc0c0c0 glyphs,
 * 80% of cells used; scrolls one 16-row line per frame; 8 frames.
 * bpp 1: Tight palette indices (0 background, 1..4 colours by word). */
static Input gen_terminal(int bpp) {
    Input in = { .name = bpp == 3 ? "terminal" : "palette-idx" };
    size_t fs = (size_t)W * 600 * bpp;
    uint8_t *f = calloc(1, fs);
    int line = 0;
    /* Fill the screen first, then scroll 8 times. */
    for (int step = 0; step < 37 + 8; step++, line++) {
        memmove(f, f + (size_t)16 * W * bpp, fs - (size_t)16 * W * bpp);
        memset(f + fs - (size_t)16 * W * bpp, 0, (size_t)16 * W * bpp);
        int y = 600 - 16 - 8; /* 600 is not a multiple of 16 */
        for (int col = 0; col < W / 8; col++) {
            if ((col * 7 + line * 13) % 5 == 0) continue;
            uint32_t c = bpp == 3 ? 0xc0c0c0 : 1 + (uint32_t)((col / 6 + line) % 4);
            glyph(f, bpp, col * 8, y, (uint64_t)(col + line * 31), c);
        }
        if (step >= 37) add_frame(&in, f, 600, bpp);
    }
    free(f);
    return in;
}

/* (3) BackendBench "video": smooth gradients plus 3-bit grain in red; 4 frames. */
static Input gen_photo(void) {
    Input in = { .name = "photo" };
    uint8_t *f = malloc(W * 600 * 3);
    for (int n = 0; n < 4; n++) {
        uint32_t grain = (uint32_t)n * 2654435761u | 1;
        for (int y = 0; y < 600; y++)
            for (int x = 0; x < W; x++) {
                grain ^= grain << 13; grain ^= grain >> 17; grain ^= grain << 5;
                uint32_t r = ((x + n * 3) / 3) & 0xff, g = ((y + n * 2) / 2) & 0xff,
                         b = ((x + y + n * 5) / 4) & 0xff;
                put(f, x, y, ((r ^ (grain & 7)) << 16 | g << 8 | b) & 0xffffff);
            }
        add_frame(&in, f, 600, 3);
    }
    free(f);
    return in;
}

/* (4) random bytes: 2 frames of 800x600x3. */
static Input gen_noise(void) {
    Input in = { .name = "noise" };
    uint8_t *f = malloc(W * 600 * 3);
    for (int n = 0; n < 2; n++) {
        for (size_t i = 0; i < W * 600 * 3; i++) f[i] = (uint8_t)rnd();
        add_frame(&in, f, 600, 3);
    }
    free(f);
    return in;
}

/* -------------------------------------------------------------- compressors */

enum { ZLIB, ISAL };
typedef struct {
    int kind, level;
    z_stream z;
    struct isal_zstream *s;
    uint8_t *lvlbuf;
    size_t lvlbuf_size;
    long not_new_hdr; /* ISA-L: returned "done" while state != ZSTATE_NEW_HDR */
} Comp;

static size_t zlib_alloc_bytes;
static voidpf count_alloc(voidpf o, uInt n, uInt s) { (void)o; zlib_alloc_bytes += (size_t)n * s; return calloc(n, s); }
static void count_free(voidpf o, voidpf p) { (void)o; free(p); }

/* level >= 10: ISA-L level level/10 with a small level_buf holding
 * (level%10) K ICF tokens (smaller deflate blocks), e.g. 11 = "isal-1m" =
 * level 1 with ISAL_DEF_LVL1_MIN. */
static int isal_real_level(int level) { return level >= 10 ? level / 10 : level; }
static size_t isal_lvlbuf_size(int level) {
    if (level >= 10) {
        size_t req = level / 10 == 1 ? ISAL_DEF_LVL1_REQ : level / 10 == 2 ? ISAL_DEF_LVL2_REQ : ISAL_DEF_LVL3_REQ;
        return req + (size_t)ISAL_DEF_LVL1_TOKEN_SIZE * (level % 10) * IGZIP_K;
    }
    switch (level) {
    case 1: return ISAL_DEF_LVL1_DEFAULT;
    case 2: return ISAL_DEF_LVL2_DEFAULT;
    case 3: return ISAL_DEF_LVL3_DEFAULT;
    default: return 0;
    }
}

static void comp_init(Comp *c, int kind, int level) {
    memset(c, 0, sizeof *c);
    c->kind = kind; c->level = level;
    if (kind == ZLIB) {
        c->z.zalloc = count_alloc; c->z.zfree = count_free;
        if (deflateInit2(&c->z, level, Z_DEFLATED, -15, 9, Z_DEFAULT_STRATEGY) != Z_OK) abort();
    } else {
        c->s = calloc(1, sizeof *c->s);
        isal_deflate_init(c->s);
        c->s->gzip_flag = IGZIP_DEFLATE;
        c->s->level = isal_real_level(level);
        c->s->hist_bits = 0;
        c->s->end_of_stream = 0;
        c->s->flush = SYNC_FLUSH;
        c->lvlbuf_size = isal_lvlbuf_size(3); /* big enough for any level: allows level changes */
        c->lvlbuf = malloc(c->lvlbuf_size);
        c->s->level_buf = c->lvlbuf;
        c->s->level_buf_size = (uint32_t)isal_lvlbuf_size(level);
    }
}

static int isal_mode = 1; /* level change: 0 in place, 1 re-init, 2 re-init + dictionary */
static void comp_set_level(Comp *c, int level, const uint8_t *dict, size_t dict_len) {
    if (c->kind == ZLIB) {
        /* Called between rectangles (after a sync flush): nothing pending. */
        uint8_t tmp[64];
        c->z.next_in = NULL; c->z.avail_in = 0;
        c->z.next_out = tmp; c->z.avail_out = sizeof tmp;
        deflateParams(&c->z, level, Z_DEFAULT_STRATEGY);
        if (c->z.avail_out != sizeof tmp) { fprintf(stderr, "deflateParams emitted bytes\n"); exit(1); }
    } else if (isal_mode == 0) {
        /* In place: UNSAFE (crashes 1/2/3->0, corrupts 2->1, 3->1); only for the gotcha test. */
        c->s->level = isal_real_level(level);
        c->s->level_buf_size = (uint32_t)isal_lvlbuf_size(level);
    } else {
        /* New stream state after the sync flush: still a valid continuation
         * for the client's inflater (raw deflate, no BFINAL). Mode 2 primes
         * the new state with the last 32 KiB of input as a dictionary. */
        isal_deflate_init(c->s);
        c->s->gzip_flag = IGZIP_DEFLATE;
        c->s->level = isal_real_level(level);
        c->s->hist_bits = 0;
        c->s->level_buf = c->lvlbuf;
        c->s->level_buf_size = (uint32_t)isal_lvlbuf_size(level);
        if (isal_mode == 2 && dict_len) {
            int rc = isal_deflate_set_dict(c->s, (uint8_t *)dict, (uint32_t)dict_len);
            if (rc != COMP_OK) { fprintf(stderr, "isal_deflate_set_dict %d\n", rc); exit(1); }
        }
    }
    c->level = level;
}

static void comp_end(Comp *c) {
    if (c->kind == ZLIB) deflateEnd(&c->z);
    else { free(c->s); free(c->lvlbuf); }
}

/* Compresses one rectangle with a sync flush; returns bytes written to out.
 * chunk: most output room offered per call (0: all of cap), to test resuming. */
static size_t comp_rect(Comp *c, const uint8_t *in, size_t len, uint8_t *out, size_t cap, size_t chunk) {
    size_t done = 0;
    if (c->kind == ZLIB) {
        c->z.next_in = (Bytef *)in; c->z.avail_in = (uInt)len;
        for (;;) {
            size_t room = cap - done;
            if (chunk && room > chunk) room = chunk;
            if (room == 0) { fprintf(stderr, "out of output space\n"); exit(1); }
            c->z.next_out = out + done; c->z.avail_out = (uInt)room;
            int rc = deflate(&c->z, Z_SYNC_FLUSH);
            if (rc != Z_OK && rc != Z_BUF_ERROR) { fprintf(stderr, "deflate %d\n", rc); exit(1); }
            done += room - c->z.avail_out;
            if (c->z.avail_in == 0 && c->z.avail_out != 0) break;
        }
    } else {
        struct isal_zstream *s = c->s;
        s->next_in = (uint8_t *)in; s->avail_in = (uint32_t)len;
        s->flush = SYNC_FLUSH; s->end_of_stream = 0;
        for (;;) {
            size_t room = cap - done;
            if (chunk && room > chunk) room = chunk;
            if (room == 0) { fprintf(stderr, "out of output space\n"); exit(1); }
            s->next_out = out + done; s->avail_out = (uint32_t)room;
            int rc = isal_deflate(s);
            if (rc != COMP_OK) { fprintf(stderr, "isal_deflate %d\n", rc); exit(1); }
            done += room - s->avail_out;
            /* igzip_lib.h: after a SYNC_FLUSH call, output room left over or
             * state ZSTATE_NEW_HDR each guarantee that all input is flushed.
             * (With exactly-filled small buffers only the state test ends the
             * loop; calling again would add an extra empty block.) */
            if (s->avail_in == 0 && (s->avail_out != 0 || s->internal_state.state == ZSTATE_NEW_HDR)) {
                if (s->internal_state.state != ZSTATE_NEW_HDR) c->not_new_hdr++;
                break;
            }
        }
    }
    return done;
}

/* ---------------------------------------------------------------- checking */

typedef struct { uint8_t *buf; size_t len, cap; size_t *rect_end; } Output;

static Output run(const Input *in, int kind, int level, size_t chunk, const int *levels_per_rect, long *not_new_hdr) {
    Output o = { .cap = in->total * 2 + 4096 + (size_t)in->n * 1024 };
    o.buf = malloc(o.cap);
    o.rect_end = malloc(sizeof(size_t) * in->n);
    Comp c;
    comp_init(&c, kind, levels_per_rect ? levels_per_rect[0] : level);
    for (int i = 0; i < in->n; i++) {
        if (levels_per_rect && levels_per_rect[i] != c.level) {
            const Rect *p = i ? &in->rects[i - 1] : NULL; /* previous rect: the last 32 KiB of input */
            size_t dl = p ? (p->len < 32768 ? p->len : 32768) : 0;
            comp_set_level(&c, levels_per_rect[i], p ? p->data + p->len - dl : NULL, dl);
        }
        o.len += comp_rect(&c, in->rects[i].data, in->rects[i].len, o.buf + o.len, o.cap - o.len, chunk);
        o.rect_end[i] = o.len;
    }
    if (not_new_hdr) *not_new_hdr = c.not_new_hdr;
    comp_end(&c);
    return o;
}

/* One zlib inflate stream, fed 0x78 0x01 then each rectangle's bytes with
 * Z_SYNC_FLUSH: every rectangle must come back whole from its own bytes. */
static int verify(const Input *in, const Output *o, char *why, size_t whylen) {
    z_stream z = {0};
    if (inflateInit(&z) != Z_OK) abort();
    static const uint8_t hdr[2] = { 0x78, 0x01 };
    uint8_t dummy[1];
    z.next_in = (Bytef *)hdr; z.avail_in = 2; z.next_out = dummy; z.avail_out = 0;
    inflate(&z, Z_SYNC_FLUSH);
    if (z.avail_in != 0) { snprintf(why, whylen, "header not consumed"); inflateEnd(&z); return 0; }
    size_t maxlen = 0;
    for (int i = 0; i < in->n; i++) if (in->rects[i].len > maxlen) maxlen = in->rects[i].len;
    uint8_t *dec = malloc(maxlen + 16);
    size_t start = 0;
    int ok = 1;
    for (int i = 0; i < in->n && ok; i++) {
        size_t clen = o->rect_end[i] - start;
        z.next_in = o->buf + start; z.avail_in = (uInt)clen;
        z.next_out = dec; z.avail_out = (uInt)(maxlen + 16); /* room past the rect: catches extra output */
        int rc = Z_OK;
        while (z.avail_in > 0 && rc == Z_OK) rc = inflate(&z, Z_SYNC_FLUSH);
        if (clen == 0 && rc == Z_OK) rc = inflate(&z, Z_SYNC_FLUSH);
        size_t got = maxlen + 16 - z.avail_out;
        if (rc != Z_OK && !(rc == Z_BUF_ERROR && z.avail_in == 0)) {
            snprintf(why, whylen, "rect %d: inflate rc %d (%s)", i, rc, z.msg ? z.msg : ""); ok = 0;
        } else if (z.avail_in != 0) {
            snprintf(why, whylen, "rect %d: %u input bytes left", i, z.avail_in); ok = 0;
        } else if (got != in->rects[i].len) {
            snprintf(why, whylen, "rect %d: got %zu bytes, want %zu", i, got, in->rects[i].len); ok = 0;
        } else if (memcmp(dec, in->rects[i].data, got) != 0) {
            snprintf(why, whylen, "rect %d: data differs", i); ok = 0;
        }
        start = o->rect_end[i];
    }
    /* Whole stream must also end byte-aligned on 00 00 ff ff. */
    if (ok && o->len >= 4 && memcmp(o->buf + o->len - 4, "\x00\x00\xff\xff", 4) != 0) {
        snprintf(why, whylen, "stream does not end with 00 00 ff ff"); ok = 0;
    }
    if (ok) snprintf(why, whylen, "ok");
    free(dec);
    inflateEnd(&z);
    return ok;
}

static void free_output(Output *o) { free(o->buf); free(o->rect_end); }

/* ----------------------------------------------------------------- timing */

static double thread_cpu(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Best of 3 measurements, each repeating the whole sequence (fresh stream,
 * all rectangles) until >= 1 s of thread CPU. Stream init is not timed. */
static double time_mbps(const Input *in, int kind, int level) {
    size_t cap = in->total * 2 + 4096 + (size_t)in->n * 1024;
    uint8_t *out = malloc(cap);
    double best = 0;
    for (int m = 0; m < 3; m++) {
        double spent = 0; size_t bytes = 0;
        while (spent < 1.0) {
            Comp c;
            comp_init(&c, kind, level);
            size_t len = 0;
            double t0 = thread_cpu();
            for (int i = 0; i < in->n; i++)
                len += comp_rect(&c, in->rects[i].data, in->rects[i].len, out + len, cap - len, 0);
            spent += thread_cpu() - t0;
            bytes += in->total;
            comp_end(&c);
        }
        double mbps = bytes / 1e6 / spent;
        if (mbps > best) best = mbps;
    }
    free(out);
    return best;
}

/* ------------------------------------------------------------------- main */

typedef struct { int kind, level; const char *name; } Method;
static const Method variants[] = {
    { ISAL, 11, "isal-1/1K" }, { ISAL, 12, "isal-1/2K" }, { ISAL, 14, "isal-1/4K" },
    { ISAL, 21, "isal-2/1K" }, { ISAL, 22, "isal-2/2K" }, { ISAL, 31, "isal-3/1K" },
};
static const Method methods[] = {
    { ZLIB, 1, "zlib-1" }, { ZLIB, 2, "zlib-2" }, { ZLIB, 3, "zlib-3" }, { ZLIB, 6, "zlib-6" },
    { ISAL, 0, "isal-0" }, { ISAL, 1, "isal-1" }, { ISAL, 11, "isal-1m" }, { ISAL, 2, "isal-2" }, { ISAL, 3, "isal-3" },
};
#define NMETHODS (int)(sizeof methods / sizeof methods[0])

static void gotchas(void) {
    printf("\n== gotchas ==\n");
    /* Empty input with SYNC_FLUSH after a flushed rect. */
    static uint8_t rect[4096], out[70000];
    for (size_t i = 0; i < sizeof rect; i++) rect[i] = (uint8_t)(i * 7 / 5);
    for (int lvl = 0; lvl <= 3; lvl++) {
        Comp c; comp_init(&c, ISAL, lvl);
        size_t a = comp_rect(&c, rect, sizeof rect, out, sizeof out, 0);
        size_t b = comp_rect(&c, rect, 0, out + a, sizeof out - a, 0);
        printf("isal-%d: empty SYNC_FLUSH after a rect emits %zu bytes:", lvl, b);
        for (size_t i = 0; i < b && i < 12; i++) printf(" %02x", out[a + i]);
        printf("%s\n", b > 12 ? " ..." : "");
        /* first call ever with empty input */
        Comp d; comp_init(&d, ISAL, lvl);
        size_t e = comp_rect(&d, rect, 0, out, sizeof out, 0);
        printf("isal-%d: empty SYNC_FLUSH as first call emits %zu bytes\n", lvl, e);
        comp_end(&c); comp_end(&d);
    }
    {
        Comp c; comp_init(&c, ZLIB, 2);
        size_t a = comp_rect(&c, rect, sizeof rect, out, sizeof out, 0);
        size_t b = comp_rect(&c, rect, 0, out + a, sizeof out - a, 0);
        printf("zlib-2: empty Z_SYNC_FLUSH after a rect emits %zu bytes\n", b);
        comp_end(&c);
    }
    /* avail_out = 0 with input pending: returns without error? */
    {
        Comp c; comp_init(&c, ISAL, 1);
        c.s->next_in = rect; c.s->avail_in = sizeof rect; c.s->next_out = out; c.s->avail_out = 0;
        int rc = isal_deflate(c.s);
        printf("isal-1: avail_out=0 call returns %d, consumed %u bytes\n", rc, (unsigned)(sizeof rect - c.s->avail_in));
        comp_end(&c);
    }
    /* Invalid level / missing level_buf */
    {
        struct isal_zstream s; isal_deflate_init(&s);
        s.level = 2; s.level_buf = NULL; s.level_buf_size = 0; s.flush = SYNC_FLUSH;
        s.next_in = rect; s.avail_in = sizeof rect; s.next_out = out; s.avail_out = sizeof out;
        printf("isal-2 without level_buf: rc %d\n", isal_deflate(&s));
        isal_deflate_init(&s);
        s.level = 4; s.flush = SYNC_FLUSH;
        s.next_in = rect; s.avail_in = sizeof rect; s.next_out = out; s.avail_out = sizeof out;
        printf("isal level 4: rc %d\n", isal_deflate(&s));
        isal_deflate_init(&s);
        s.level = 1; s.level_buf = malloc(ISAL_DEF_LVL1_MIN); s.level_buf_size = ISAL_DEF_LVL1_MIN; s.flush = SYNC_FLUSH;
        s.next_in = rect; s.avail_in = sizeof rect; s.next_out = out; s.avail_out = sizeof out;
        printf("isal-1 with LVL1_MIN buffer (%d B): rc %d\n", ISAL_DEF_LVL1_MIN, isal_deflate(&s));
        free(s.level_buf);
    }
}

static void memory(void) {
    printf("\n== memory per stream ==\n");
    printf("sizeof(struct isal_zstream) = %zu\n", sizeof(struct isal_zstream));
    for (int l = 0; l <= 3; l++)
        printf("isal-%d: level_buf %zu + stream %zu = %zu bytes (%.0f KiB)\n", l, isal_lvlbuf_size(l),
               sizeof(struct isal_zstream), isal_lvlbuf_size(l) + sizeof(struct isal_zstream),
               (isal_lvlbuf_size(l) + sizeof(struct isal_zstream)) / 1024.0);
    printf("isal level_buf sizes lvl1 MIN/SMALL/MEDIUM/LARGE/XL: %d %d %d %d %d\n", ISAL_DEF_LVL1_MIN,
           ISAL_DEF_LVL1_SMALL, ISAL_DEF_LVL1_MEDIUM, ISAL_DEF_LVL1_LARGE, ISAL_DEF_LVL1_EXTRA_LARGE);
    printf("isal level_buf sizes lvl3 MIN/SMALL/MEDIUM/LARGE/XL: %d %d %d %d %d\n", ISAL_DEF_LVL3_MIN,
           ISAL_DEF_LVL3_SMALL, ISAL_DEF_LVL3_MEDIUM, ISAL_DEF_LVL3_LARGE, ISAL_DEF_LVL3_EXTRA_LARGE);
    zlib_alloc_bytes = 0;
    Comp c; comp_init(&c, ZLIB, 2);
    printf("zlib (wbits -15, memLevel 9): %zu bytes allocated (%.0f KiB) + z_stream %zu\n",
           zlib_alloc_bytes, zlib_alloc_bytes / 1024.0, sizeof(z_stream));
    comp_end(&c);
}

/* Streams total_in past 2^32 on one ISA-L stream, verifying as it goes. */
static int wrap_test(int level) {
    Input t = gen_terminal(3);
    Comp c; comp_init(&c, ISAL, level);
    z_stream z = {0};
    inflateInit(&z);
    static const uint8_t hdr[2] = { 0x78, 0x01 };
    uint8_t dummy[1];
    z.next_in = (Bytef *)hdr; z.avail_in = 2; z.next_out = dummy; z.avail_out = 0;
    inflate(&z, Z_SYNC_FLUSH);
    size_t cap = 2 * 76800 + 4096;
    uint8_t *out = malloc(cap), *dec = malloc(76800 + 16);
    uint64_t total = 0, limit = (1ull << 32) + (256ull << 20);
    long rects = 0; int ok = 1;
    while (total < limit && ok) {
        for (int i = 0; i < t.n && ok; i++, rects++) {
            Rect *r = &t.rects[i];
            /* vary the data a little so it is not one long repeat */
            r->data[(rects * 7919) % r->len] ^= 0x55;
            size_t n = comp_rect(&c, r->data, r->len, out, cap, 0);
            z.next_in = out; z.avail_in = (uInt)n; z.next_out = dec; z.avail_out = 76800 + 16;
            int rc = Z_OK;
            while (z.avail_in > 0 && rc == Z_OK) rc = inflate(&z, Z_SYNC_FLUSH);
            if ((rc != Z_OK && rc != Z_BUF_ERROR) || z.avail_in || 76800 + 16 - z.avail_out != r->len
                || memcmp(dec, r->data, r->len)) {
                printf("wrap isal-%d: FAIL at rect %ld, total_in %llu (stream total_in %u): rc %d %s\n", level, rects,
                       (unsigned long long)total, c.s->total_in, rc, z.msg ? z.msg : "");
                ok = 0;
            }
            total += r->len;
        }
    }
    if (ok) printf("wrap isal-%d: ok, %llu bytes (%.2f GiB) through one stream, total_in now %u\n", level,
                   (unsigned long long)total, total / 1073741824.0, c.s->total_in);
    comp_end(&c); inflateEnd(&z); free(out); free(dec);
    return ok;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int timing = argc < 2;
    int quick = argc >= 2 && strcmp(argv[1], "quick") == 0; /* no small-buffer reruns (for qemu) */
    if (argc >= 2 && strcmp(argv[1], "variants") == 0) {
        /* ISA-L with smaller level_buf (K ICF tokens per deflate block): ratio, verify, CPU. */
        Input inputs[6] = { gen_bars(), gen_band(), gen_terminal(3), gen_photo(), gen_noise(), gen_terminal(1) };
        int failures = 0;
        printf("%-12s", "input");
        for (size_t m = 0; m < sizeof variants / sizeof variants[0]; m++) printf(" %22s", variants[m].name);
        printf("\n");
        for (int k = 0; k < 6; k++) {
            printf("%-12s", inputs[k].name);
            for (size_t m = 0; m < sizeof variants / sizeof variants[0]; m++) {
                char why[200];
                Output o = run(&inputs[k], ISAL, variants[m].level, 0, NULL, NULL);
                int ok = verify(&inputs[k], &o, why, sizeof why);
                failures += !ok;
                double ratio = (double)inputs[k].total / o.len;
                free_output(&o);
                printf(" %5.0f MB/s %5.2fx %s", time_mbps(&inputs[k], ISAL, variants[m].level), ratio, ok ? "ok" : "BAD");
            }
            printf("\n");
        }
        printf("failures: %d\n", failures);
        return failures != 0;
    }
    if (argc >= 2 && strcmp(argv[1], "wrap") == 0) {
        int ok = 1;
        for (int i = 2; i < argc; i++) ok &= wrap_test(atoi(argv[i]));
        return ok ? 0 : 1;
    }
    Input inputs[6] = { gen_bars(), gen_band(), gen_terminal(3), gen_photo(), gen_noise(), gen_terminal(1) };
    int ninputs = 6, failures = 0;

    printf("zlib %s, ISA-L igzip (libisal2), rects of 800x%d pixels\n", zlibVersion(), RECT_ROWS);
    for (int k = 0; k < ninputs; k++)
        printf("input %-12s %3d rects, %8zu bytes\n", inputs[k].name, inputs[k].n, inputs[k].total);

    printf("\n== correctness (one inflate stream, rect by rect) + output checksum ==\n");
    static const size_t chunks[] = { 0, 1, 7, 100, 333 };
    for (int k = 0; k < ninputs; k++)
        for (int m = 0; m < NMETHODS; m++) {
            const Method *me = &methods[m];
            char why[200];
            long nnh = 0;
            Output ref = run(&inputs[k], me->kind, me->level, 0, NULL, &nnh);
            int ok = verify(&inputs[k], &ref, why, sizeof why);
            failures += !ok;
            size_t maxexp = 0; /* worst rect: output - input */
            size_t prev = 0;
            for (int i = 0; i < inputs[k].n; i++) {
                size_t cl = ref.rect_end[i] - prev; prev = ref.rect_end[i];
                if (cl > inputs[k].rects[i].len && cl - inputs[k].rects[i].len > maxexp) maxexp = cl - inputs[k].rects[i].len;
            }
            printf("%-12s %-7s out %9zu crc %08lx verify %s", inputs[k].name, me->name, ref.len,
                   crc32(0, ref.buf, (uInt)ref.len), why);
            if (maxexp) printf(" (worst rect expands by %zu B)", maxexp);
            if (nnh) printf(" [%ld rects ended with state != NEW_HDR]", nnh);
            /* Small output buffers: resumable, same bytes? (the 1-byte case only on small inputs) */
            for (size_t ci = 1; ci < (quick ? 1 : sizeof chunks / sizeof chunks[0]); ci++) {
                /* zlib.h: with Z_SYNC_FLUSH keep avail_out > 6, else repeated flush markers. */
                if (chunks[ci] == 1 && (inputs[k].total > 4000000 || me->kind == ZLIB)) continue;
                Output o = run(&inputs[k], me->kind, me->level, chunks[ci], NULL, &nnh);
                int ok2 = verify(&inputs[k], &o, why, sizeof why);
                failures += !ok2;
                printf(" | avail_out<=%zu: %s%s", chunks[ci], ok2 ? "ok" : why,
                       o.len == ref.len && memcmp(o.buf, ref.buf, o.len) == 0 ? " same" : " DIFFERENT-BYTES");
                free_output(&o);
            }
            printf("\n");
            free_output(&ref);
        }

    printf("\n== level changes mid-stream (per rect) ==\n");
    for (int kind = ZLIB; kind <= ISAL + 1; kind++) {
        const Input *in = &inputs[2];
        isal_mode = kind == ISAL ? 1 : 2;
        int *lv = malloc(sizeof(int) * in->n);
        for (int i = 0; i < in->n; i++)
            lv[i] = kind != ZLIB ? (int[]){0, 1, 2, 3, 1, 3, 2, 0, 3}[i % 9] : (int[]){1, 2, 3, 6, 9, 0, 2}[i % 7];
        char why[200];
        Output o = run(in, kind > ISAL ? ISAL : kind, 0, 0, lv, NULL);
        int ok = verify(in, &o, why, sizeof why);
        failures += !ok;
        printf("%s level switching every rect on %s: %s (%zu bytes)\n",
               kind == ZLIB ? "zlib (deflateParams)" : kind == ISAL ? "isal (re-init)" : "isal (re-init + set_dict 32K)", in->name, why, o.len);
        free_output(&o);
        free(lv);
    }

    gotchas();
    memory();

    if (timing) {
        printf("\n== CPU: MB (1e6 B) of input per CPU second, best of 3 x >= 1 s; ratio = in/out ==\n");
        printf("%-12s", "input");
        for (int m = 0; m < NMETHODS; m++) printf(" %16s", methods[m].name);
        printf("\n");
        for (int k = 0; k < ninputs; k++) {
            printf("%-12s", inputs[k].name);
            for (int m = 0; m < NMETHODS; m++) {
                Output o = run(&inputs[k], methods[m].kind, methods[m].level, 0, NULL, NULL);
                double ratio = (double)inputs[k].total / o.len;
                free_output(&o);
                double mbps = time_mbps(&inputs[k], methods[m].kind, methods[m].level);
                printf(" %7.0f MB/s %5.2fx", mbps, ratio);
                fflush(stdout);
            }
            printf("\n");
        }
    }
    printf("\nfailures: %d\n", failures);
    return failures ? 1 : 0;
}
