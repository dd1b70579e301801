/// Backend settings from the device model's configuration, never from
/// guest-writable keys.
public struct BackendConfig: Sendable {
    /// Largest framebuffer (`mem_length`) a guest may have; clamped to 512 MiB
    /// (QEMU's `fb_len_max`). 64-bit guests are further limited to 123 page
    /// directories (246 MiB) because later `pd[]` entries lie in the IN ring.
    public var maxFramebufferBytes: Int = 32 << 20
    /// More queued update rectangles than this become one full-screen update.
    public var maxQueuedRects: Int = 8
    /// How long update events are gathered before the frame is copied and
    /// the displays are told (the coalescing tick).
    public var updateDelay: Duration = .milliseconds(10)
    /// How often a frontend without `feature-update` is compared against the frame.
    public var pollInterval: Duration = .milliseconds(50)
    /// Input events waiting for room in the guest's keyboard ring.
    public var inputQueueLimit: Int = 1 << 16
    /// Offer `feature-raw-pointer` (absolute coordinates in 0..0x7fff).
    public var rawPointer: Bool = true

    // vdispl (displif.h): what one device may make the backend hold.
    /// Connectors (screens) per vdispl device; more configured ones are not
    /// served. 4 is Linux drm/xen-front's XEN_DRM_FRONT_MAX_CRTCS.
    public var vdisplMaxConnectors: Int = 4
    /// Largest connector resolution, as the XRGB frame it needs (width ×
    /// height × 4): 64 MiB fits 4096×4096.
    public var vdisplMaxFrameBytes: Int = 64 << 20
    /// Display buffers (DBUF_CREATE) a device may have at once.
    public var vdisplMaxBuffers: Int = 32
    /// Framebuffers (FB_ATTACH) a device may have at once.
    public var vdisplMaxFramebuffers: Int = 64
    /// Guest memory all of a device's buffers may map at once, in bytes
    /// (each page is one grant mapped): 128 MiB is 32768 grants.
    public var vdisplMaxMappedBytes: Int = 128 << 20
    /// How often a connector's shown buffer is compared with its screen,
    /// for a guest that draws into it without flipping (drm/xen-front
    /// reports no damage); flips are shown at once. While the compares find
    /// nothing the interval doubles, up to `vdisplPollIntervalMax`; a change
    /// it finds or a new configuration brings it back (a flip does not: a
    /// program that flips draws into the buffer not shown).
    public var vdisplPollInterval: Duration = .milliseconds(50)
    public var vdisplPollIntervalMax: Duration = .milliseconds(800)

    public init() {}

    /// The framebuffer limit actually applied.
    public var framebufferLimit: Int { min(max(maxFramebufferBytes, 0), 512 << 20) }
}
