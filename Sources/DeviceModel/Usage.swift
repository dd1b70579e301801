let usageText = """
usage: xenvfb [OPTIONS]                 run as the device model of a Xen domain
       xenvfb demo [OPTIONS]            simulated host with a built-in guest
       xenvfb xenstored --socket PATH   the embedded xenstored, standalone
       xenvfb screenshot (--domid N | --qmp PATH) [-o FILE] [--wait-still MS]
                                        a picture of a guest's screen over QMP
       xenvfb --version                 the version (that of the Debian package)

Device model options (the QEMU-style ones libxl passes work too):
  --domid N                    the guest's domain id (-xen-domid N)
  --domain NAME                the guest by name: wait for it, stop when it is gone
  --vdispl-only                serve only the guest's vdispl devices (no vfb, no libxl model)
  --name NAME                  the guest's name
  --vnc DISPLAY|none           a VNC server, in QEMU's -vnc syntax (127.0.0.1:0[,websocket=on][,tls-creds=ID])
  --object tls-creds-x509,id=ID,dir=DIR,endpoint=server    TLS for the VNC server (as QEMU)
  --sdl                        an SDL window
  --display png:dir=DIR,...    PNG capture (repeatable)
  --qmp unix:PATH              a QMP socket (also -chardev ... -mon ...,mode=control)
  --keymap MAP                 keyboard layout, a QEMU -k name (en-us, de, fr, ja, ...)
  --input-pace MS              at most one input event per MS ms to the guest
  --update-interval MS         the vfb coalescing tick (default 10)
  --log-level LEVEL            trace, debug, info, notice, warning, error, critical
  -S                           start in prelaunch, until QMP cont
demo also takes --seconds N, --vdispl (a KMS screen too, on console 1) and
--dirty-tracking auto|uffd|mprotect|compare.
See xenvfb(1) for every option.
"""
