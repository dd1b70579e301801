// GuestKit
