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

    public init() {}

    /// The framebuffer limit actually applied.
    public var framebufferLimit: Int { min(max(maxFramebufferBytes, 0), 512 << 20) }
}
