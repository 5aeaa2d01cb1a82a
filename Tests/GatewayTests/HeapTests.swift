import Foundation
import Testing
import TestSupport

/// The malloc arenas of a running gateway (`Heap.limitArenas`), read from its `/proc/PID/smaps`.
@Suite("Heap: at most two malloc arenas in a running gateway", .timeLimit(.minutes(2)))
struct HeapTests {
    /// glibc's arenas other than the main one (which grows with brk, as `[heap]`): each is a
    /// 64 MiB reservation aligned to 64 MiB, its used part `rw-p` and the rest `---p`, both
    /// anonymous and adjacent.
    static func mappedArenas(pid: pid_t) throws -> Int {
        // Read to the end (a /proc file has no size; a single read gets its first page only).
        guard let handle = FileHandle(forReadingAtPath: "/proc/\(pid)/smaps"),
              let data = try handle.readToEnd() else { throw CocoaError(.fileReadUnknown) }
        let text = String(decoding: data, as: UTF8.self)
        let heapSize: UInt64 = 64 << 20
        var regions: [(start: UInt64, end: UInt64, perms: String, anonymous: Bool)] = []
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 5, let dash = fields[0].firstIndex(of: "-"),
                  let start = UInt64(fields[0][..<dash], radix: 16),
                  let end = UInt64(fields[0][fields[0].index(after: dash)...], radix: 16) else { continue }
            regions.append((start, end, String(fields[1]), fields.count == 5))
        }
        var count = 0
        for (i, r) in regions.enumerated() where r.anonymous && r.perms == "rw-p" && r.start % heapSize == 0 {
            let next = i + 1 < regions.count ? regions[i + 1] : nil
            let end = next.map { $0.anonymous && $0.perms == "---p" && $0.start == r.end ? $0.end : r.end } ?? r.end
            if end - r.start == heapSize { count += 1 }
        }
        return count
    }

    @Test("with four buses polling (a thread each), publishing and taking a command, the gateway has the main arena and at most one more")
    func twoArenas() async throws {
        // Every thread that allocates would get an arena of its own without the limit: four bus
        // threads, the event loop, the pool, a command's job.
        let rig = try await Rig.start(points: "", simArgs: ["--set", "holding:0=5"], bodyWithPort: { port in
            (1...4).map { i in """
                [[bus]]
                name = "plc\(i)"
                type = "tcp"
                host = "127.0.0.1"
                port = \(port)
                timeout_ms = 300
                [[device]]
                name = "dev\(i)"
                bus = "plc\(i)"
                unit = 1
                poll_ms = 50
                [[device.point]]
                name = "v"
                register = "holding"
                address = 0
                writable = true
                """ }.joined(separator: "\n")
        })
        for i in 1...4 { try await rig.waitFor("gateway/e2e/dev\(i)/v", "5") }
        try await rig.observer.publish(to: "gateway/e2e/dev1/v/set", string: "6", qos: .atLeastOnce)
        for i in 1...4 { try await rig.waitFor("gateway/e2e/dev\(i)/v", "6") }
        #expect(try Self.mappedArenas(pid: rig.gateway.pid) <= 1)
        await rig.shutdown()
    }
}
