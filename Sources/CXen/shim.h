// One module for every Xen header: xenctrl.h defines __XEN_TOOLS__, which
// changes struct layouts in xen/arch-x86; separate modules then disagree
// (clang module ODR error). Define it once, before anything is included.
#ifndef __XEN_TOOLS__
#define __XEN_TOOLS__ 1
#endif
#include <stdint.h>
#include <xenctrl.h>
#include <xenstore.h>
#include <xenforeignmemory.h>
#include <xenevtchn.h>
#include <xengnttab.h>
#include <xendevicemodel.h>
#include <xentoolcore.h>
#include <xen/io/fbif.h>
#include <xen/io/kbdif.h>
#include <xen/io/displif.h>
#include <xen/io/xs_wire.h>
