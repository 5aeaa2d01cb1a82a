import Testing
@testable import Gateway

#if canImport(Glibc)
import Glibc

/// What the HTTP listener's give-back (``OccasionalWorkPages``) may unmap, read in this test
/// process: a page of writable data that is still the file's when pagemap is read may be written
/// by another thread before the unmap, and the unmap would lose that write. So its ranges hold
/// only read-only mappings of the executable and its `.rodata`.
@Suite("Page give-back between HTTP requests")
struct PageGiveBackTests {
    @Test("its ranges cover read-only mappings and .rodata only, never writable data")
    func rangesAreReadOnly() throws {
        let pages = try #require(OccasionalWorkPages())
        let exe = try #require(PageMap.executable())
        let mappings = try #require(PageMap.mappings(of: exe))
        #expect(mappings.contains { $0.writable }, "the test binary has a writable mapping (its .data)")
        let rodata = CodePages.readOnlyDataPages(exe: exe)
        var checked = 0
        for r in pages.ranges {
            for p in r.first..<(r.first + UInt(r.count)) {
                let address = p * PageMap.pageSize
                let mapping = try #require(mappings.first { $0.start <= address && address < $0.end }, "page \(p) is in no mapping of the executable")
                if mapping.writable {
                    let rodata = try #require(rodata, "a writable page outside any .rodata")
                    #expect(rodata.first <= p && p < rodata.first + UInt(rodata.count), "page at \(address) is writable data, not .rodata")
                }
                checked += 1
            }
        }
        #expect(checked > 100)
    }
}
#endif
