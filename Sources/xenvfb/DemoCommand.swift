import Support
enum DemoCommand {
    static func main(_ args: [String]) -> Int32 {
        Log.logger("demo").error("not implemented yet")
        return 1
    }
}
