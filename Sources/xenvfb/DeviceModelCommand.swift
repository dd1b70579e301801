import Support
enum DeviceModelCommand {
    static func main(_ args: [String]) -> Int32 {
        Log.logger("xenvfb").error("device-model mode not implemented yet")
        return 1
    }
}
