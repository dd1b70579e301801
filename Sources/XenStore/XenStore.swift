// XenStore
