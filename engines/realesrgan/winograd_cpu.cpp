// 3x3 stride-1 convolution by Winograd F(4x4, 3x3) for vsrkit's CPU path (see native_runtime.py).
//
// Per row of 4x4 output tiles, a chunk of tiles is transformed, multiplied and transformed back
// while it is still in the core's cache; bias, activation and a scaled residual are applied on the
// way out. Written with GCC/Clang vector extensions, so the compiler emits AVX2, AVX-512 or NEON
// for the CPU it compiles on.
//
// Layout: every image is NHWC float32 in a zero-padded frame of (4*ceil(H/4)+2) x (4*ceil(W/4)+2)
// pixels, the pixel (y, x) at (y+1, x+1); `*_stride` is the buffer's channels per pixel, so a
// convolution can read or write a channel slice of a wider buffer. Only the H x W pixels are
// written: the padding stays zero and is the next convolution's zero padding.

#include <stddef.h>

typedef float vec8 __attribute__((vector_size(32), aligned(4)));

static inline vec8 load8(const float *p) { return *(const vec8 *)p; }
static inline void store8(float *p, vec8 v) { *(vec8 *)p = v; }
static inline vec8 splat(float x) { return (vec8){x, x, x, x, x, x, x, x}; }

// B^T of F(4,3), applied to six vectors.
static inline void input_rows(vec8 d0, vec8 d1, vec8 d2, vec8 d3, vec8 d4, vec8 d5, vec8 out[6]) {
    out[0] = splat(4) * d0 - splat(5) * d2 + d4;
    out[1] = (d3 + d4) - splat(4) * (d1 + d2);
    out[2] = (d4 - d3) + splat(4) * (d1 - d2);
    out[3] = (d4 - d2) + splat(2) * (d3 - d1);
    out[4] = (d4 - d2) - splat(2) * (d3 - d1);
    out[5] = splat(4) * d1 - splat(5) * d3 + d5;
}

// A^T of F(4,3), applied to six vectors.
static inline void output_rows(vec8 m0, vec8 m1, vec8 m2, vec8 m3, vec8 m4, vec8 m5, vec8 out[4]) {
    vec8 sum12 = m1 + m2, diff12 = m1 - m2, sum34 = m3 + m4, diff34 = m3 - m4;
    out[0] = m0 + sum12 + sum34;
    out[1] = diff12 + splat(2) * diff34;
    out[2] = sum12 + splat(4) * sum34;
    out[3] = diff12 + splat(8) * diff34 + m5;
}

// tiles[p][t][k] for the chunk's tiles t (the last tile repeats to fill a block of six).
static void transform_input(const float *in, int in_stride, int width_p, int tile_row, int first_tile,
                            int tiles, int padded_tiles, int cin, float *tiles_buf, size_t position_stride) {
    for (int t = 0; t < padded_tiles; t++) {
        int source = first_tile + (t < tiles ? t : tiles - 1);
        const float *base = in + ((size_t)(4 * tile_row) * width_p + 4 * source) * in_stride;
        for (int k = 0; k < cin; k += 8) {
            vec8 columns[6][6];
            for (int j = 0; j < 6; j++) {
                const float *column = base + (size_t)j * in_stride + k;
                size_t row = (size_t)width_p * in_stride;
                vec8 rows[6];
                input_rows(load8(column), load8(column + row), load8(column + 2 * row), load8(column + 3 * row),
                           load8(column + 4 * row), load8(column + 5 * row), rows);
                for (int i = 0; i < 6; i++) columns[i][j] = rows[i];
            }
            for (int i = 0; i < 6; i++) {
                vec8 values[6];
                input_rows(columns[i][0], columns[i][1], columns[i][2], columns[i][3], columns[i][4], columns[i][5],
                           values);
                float *target = tiles_buf + (size_t)(i * 6) * position_stride + (size_t)t * cin + k;
                for (int j = 0; j < 6; j++) store8(target + j * position_stride, values[j]);
            }
        }
    }
}

// products[p][t][0:cout] = tiles[p][t][0:cin] @ weights[p][0:cin][0:cout], six tiles by 16 outputs at a time.
static void multiply(const float *tiles_buf, const float *weights, int padded_tiles, int cin, int cout,
                     size_t tiles_stride, size_t products_stride, float *products) {
    for (int p = 0; p < 36; p++) {
        const float *tp = tiles_buf + p * tiles_stride;
        const float *wp = weights + (size_t)p * cin * cout;
        float *pp = products + p * products_stride;
        for (int t0 = 0; t0 < padded_tiles; t0 += 6) {
            const float *a = tp + (size_t)t0 * cin;
            for (int j = 0; j < cout; j += 16) {
                vec8 acc[6][2];
                for (int r = 0; r < 6; r++) acc[r][0] = acc[r][1] = splat(0);
                const float *w = wp + j;
                for (int k = 0; k < cin; k++, w += cout) {
                    vec8 w0 = load8(w), w1 = load8(w + 8);
                    for (int r = 0; r < 6; r++) {
                        vec8 v = splat(a[(size_t)r * cin + k]);
                        acc[r][0] += v * w0;
                        acc[r][1] += v * w1;
                    }
                }
                float *out = pp + (size_t)t0 * cout + j;
                for (int r = 0; r < 6; r++) {
                    store8(out + (size_t)r * cout, acc[r][0]);
                    store8(out + (size_t)r * cout + 8, acc[r][1]);
                }
            }
        }
    }
}

static void transform_output(const float *products, size_t position_stride, int tile_row, int first_tile, int tiles,
                             int height, int width, int width_p, int cout, const float *bias, const float *slope,
                             float residual_scale, const float *residual, int residual_stride, float *out,
                             int out_stride) {
    for (int t = 0; t < tiles; t++) {
        int x0 = 4 * (first_tile + t);
        for (int j = 0; j < cout; j += 8) {
            vec8 partial[4][6];
            for (int b = 0; b < 6; b++) {
                const float *m = products + (size_t)b * position_stride + (size_t)t * cout + j;
                vec8 rows[4];
                output_rows(load8(m), load8(m + 6 * position_stride), load8(m + 12 * position_stride),
                            load8(m + 18 * position_stride), load8(m + 24 * position_stride),
                            load8(m + 30 * position_stride), rows);
                for (int y = 0; y < 4; y++) partial[y][b] = rows[y];
            }
            vec8 b8 = load8(bias + j);
            vec8 s8 = slope ? load8(slope + j) : splat(1);
            for (int y = 0; y < 4 && 4 * tile_row + y < height; y++) {
                vec8 values[4];
                output_rows(partial[y][0], partial[y][1], partial[y][2], partial[y][3], partial[y][4], partial[y][5],
                            values);
                size_t pixel = (size_t)(4 * tile_row + y + 1) * width_p + x0 + 1;
                for (int x = 0; x < 4 && x0 + x < width; x++) {
                    vec8 v = values[x] + b8;
                    if (slope) v = v > 0 ? v : v * s8;
                    if (residual) v = splat(residual_scale) * v + load8(residual + (pixel + x) * residual_stride + j);
                    store8(out + (pixel + x) * out_stride + j, v);
                }
            }
        }
    }
}

extern "C" {

// Scratch floats one thread needs for `chunk` tiles per step (rounded up to the block of six).
size_t vsrkit_winograd_scratch(int chunk, int cin, int cout) {
    chunk = (chunk + 5) / 6 * 6;
    return (size_t)36 * chunk * (size_t)(cin + cout);
}

// out = residual_scale * act(conv3x3(in) + bias) + residual for the tile rows [row_begin, row_end).
// cin must be a multiple of 8 and cout of 16; weights are [36][cin][cout] (the transformed kernel);
// slope (per output channel; NULL: no activation) gives PReLU, LeakyReLU (all equal) or ReLU (zeros);
// residual may be NULL. `out` must not overlap the channels read from `in` or `residual`.
void vsrkit_winograd_conv3x3(const float *in, int in_stride, float *out, int out_stride, int height, int width,
                             int cin, int cout, const float *weights, const float *bias, const float *slope,
                             const float *residual, int residual_stride, float residual_scale, int row_begin,
                             int row_end, int chunk, float *scratch) {
    int tile_cols = (width + 3) / 4;
    int width_p = 4 * tile_cols + 2;
    chunk = (chunk + 5) / 6 * 6;
    size_t tiles_stride = (size_t)chunk * cin, products_stride = (size_t)chunk * cout;
    float *tiles_buf = scratch, *products = scratch + 36 * tiles_stride;
    for (int row = row_begin; row < row_end; row++) {
        for (int first = 0; first < tile_cols; first += chunk) {
            int tiles = tile_cols - first < chunk ? tile_cols - first : chunk;
            int padded = (tiles + 5) / 6 * 6;
            transform_input(in, in_stride, width_p, row, first, tiles, padded, cin, tiles_buf, tiles_stride);
            multiply(tiles_buf, weights, padded, cin, cout, tiles_stride, products_stride, products);
            transform_output(products, products_stride, row, first, tiles, height, width, width_p, cout, bias, slope,
                             residual_scale, residual, residual_stride, out, out_stride);
        }
    }
}

}
