@testable import Gateway
import Testing

/// The outbox's decisions in-process.
@Suite("Outbox in memory")
struct OutboxLogicTests {
    func record(_ topic: String, _ n: Int, compactable: Bool) -> OutboxRecord {
        OutboxRecord(topic: topic, payload: Array("\(n)".utf8), retain: compactable, compactable: compactable, ts: Int64(n))
    }

    @Test("memory over its bound (the file cannot be written): older values of a topic with a newer one go first, then the oldest; scans and the newest value of each topic stay longest, in order")
    func thin() {
        var records = [record("v", 1, compactable: true), record("scan", 2, compactable: false), record("v", 3, compactable: true),
                       record("w", 4, compactable: true), record("scan", 5, compactable: false), record("v", 6, compactable: true)]
        #expect(Outbox.thin(&records, to: 10).isEmpty && records.count == 6, "within the bound: nothing goes")
        var gone = Outbox.thin(&records, to: 4)
        #expect(gone == ["v": 2])
        #expect(records.map { String(decoding: $0.payload, as: UTF8.self) } == ["2", "4", "5", "6"])
        gone = Outbox.thin(&records, to: 2)
        #expect(gone == ["scan": 1, "w": 1], "then the oldest, whatever they are")
        #expect(records.map { String(decoding: $0.payload, as: UTF8.self) } == ["5", "6"])
    }
}
