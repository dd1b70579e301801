let usageText = """
usage: xenvfb [OPTIONS]                 run as the device model of a Xen domain
       xenvfb demo [OPTIONS]            simulated host with a built-in guest
       xenvfb xenstored --socket PATH   the embedded xenstored, standalone
See xenvfb(1) for every option.
"""
