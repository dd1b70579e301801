// XenBus
