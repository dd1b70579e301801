#include "pngwrite.h"
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

struct failure {
    char *error;
    size_t size;
};

static void on_error(png_structp png, png_const_charp message) {
    struct failure *f = png_get_error_ptr(png);
    if (f && f->error && f->size) snprintf(f->error, f->size, "%s", message);
    png_longjmp(png, 1);
}

static void on_warning(png_structp png, png_const_charp message) {
    (void)png;
    (void)message;
}

int xenvfb_png_write(FILE *file, int width, int height, xenvfb_png_row_fn row, void *context,
                     char *error, size_t error_size) {
    struct failure failure = {error, error_size};
    if (error_size) error[0] = 0;
    if (width <= 0 || height <= 0) {
        snprintf(error, error_size, "empty picture");
        return -1;
    }
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &failure, on_error, on_warning);
    if (!png) {
        snprintf(error, error_size, "libpng: out of memory");
        return -1;
    }
    png_infop info = png_create_info_struct(png);
    // volatile: changed between setjmp and a longjmp back to it.
    unsigned char *volatile buffer = NULL;
    if (!info || setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, info ? &info : NULL);
        free(buffer);
        if (error_size && !error[0]) snprintf(error, error_size, "libpng failed");
        return -1;
    }
    buffer = malloc((size_t)width * 3);
    if (!buffer) png_error(png, "out of memory");
    png_init_io(png, file);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_set_compression_level(png, 1);
    png_set_filter(png, PNG_FILTER_TYPE_BASE, PNG_FILTER_SUB);
    png_write_info(png, info);
    for (int y = 0; y < height; y++) {
        if (row(context, y, buffer) != 0) png_error(png, "the picture changed size while it was written");
        png_write_row(png, buffer);
    }
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(buffer);
    return 0;
}
