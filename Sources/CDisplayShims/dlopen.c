// Opening the libraries of libraries.h, with errors a user can act on.
#include <dlfcn.h>
#include <stdio.h>
#include "displayshims.h"

void *xenvfb_dlopen(const struct xenvfb_library *library, char *error, size_t size) {
    void *handle = dlopen(library->soname, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        const char *reason = dlerror();
        snprintf(error, size,
                 "%s needs %s from the Debian package %s, which cannot be loaded (%s); "
                 "install it (apt install %s) or start without that option",
                 library->needed_by, library->soname, library->package, reason ? reason : "unknown error",
                 library->package);
    }
    return handle;
}

void xenvfb_dlopen_lacks(const struct xenvfb_library *library, void *handle, const char *symbol,
                         char *error, size_t size) {
    snprintf(error, size,
             "%s needs %s from the Debian package %s, but the one installed has no %s (too old?); "
             "upgrade it (apt install %s) or start without that option",
             library->needed_by, library->soname, library->package, symbol, library->package);
    if (handle) dlclose(handle);
}
