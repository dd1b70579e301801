enum XenstoredCommand {
    static func main(_ args: [String]) -> Int32 {
        Support.Log.logger("xenstored").error("not implemented yet")
        return 1
    }
}
import Support
