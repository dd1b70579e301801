#pragma once
// A PNG written row by row through libpng's low-level API, which reports
// errors with longjmp (so it is C: Swift cannot call setjmp).
#include <stdio.h>
#include <stddef.h>

/// Fills `rgb` (width × 3 bytes, R G B) with row `y`; returns 0, or nonzero
/// to stop (the picture changed size).
typedef int (*xenvfb_png_row_fn)(void *context, int y, unsigned char *rgb);

/// Writes a width × height RGB PNG to `file`, asking `row` for each row in
/// order (fast zlib level, no filtering: about 20 ms for 1080p desktop
/// content). Only one row is ever held. Returns 0, or -1 with the reason in
/// `error`.
int xenvfb_png_write(FILE *file, int width, int height, xenvfb_png_row_fn row, void *context,
                     char *error, size_t error_size);
