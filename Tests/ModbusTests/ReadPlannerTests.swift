import Testing
@testable import Modbus

@Suite("Read planner")
struct ReadPlannerTests {
    func items(_ specs: [(RegisterKind, Int, Int)]) -> [ReadItem] {
        specs.enumerated().map { ReadItem(id: $0.offset, kind: $0.element.0, address: $0.element.1, count: $0.element.2) }
    }

    @Test("holding 0-15, holding 100-103 and coils 0-7: 3 requests on TCP defaults")
    func benchmarkDevice() {
        var specs: [(RegisterKind, Int, Int)] = (0..<16).map { (.holding, $0, 1) }
        specs += (100..<104).map { (.holding, $0, 1) }
        specs += (0..<8).map { (.coil, $0, 1) }
        let plan = ReadPlan(items: items(specs), gaps: .tcp)
        #expect(plan.requests.map(\.description) == ["FC1 coil 0..7 (8)", "FC3 holding 0..15 (16)", "FC3 holding 100..103 (4)"])
        let wide = ReadPlan(items: items(specs), gaps: GapPolicy(maxRegisterGap: 100, maxBitGap: 0))
        #expect(wide.requests.count == 2)
    }

    @Test("bridges gaps up to the policy and not beyond", arguments: [(4, 1), (3, 2)])
    func gapBridging(maxGap: Int, expected: Int) {
        let plan = ReadPlan(items: items([(.holding, 10, 2), (.holding, 16, 1)]), gaps: GapPolicy(maxRegisterGap: maxGap, maxBitGap: 0))
        #expect(plan.requests.count == expected)
    }

    @Test("respects 125 registers and 2000 bits per read")
    func limits() {
        #expect(ReadPlan(items: items([(.input, 0, 1), (.input, 124, 1)]), gaps: GapPolicy(maxRegisterGap: 200, maxBitGap: 0)).requests.count == 1)
        #expect(ReadPlan(items: items([(.input, 0, 1), (.input, 125, 1)]), gaps: GapPolicy(maxRegisterGap: 200, maxBitGap: 0)).requests.count == 2)
        #expect(ReadPlan(items: items([(.input, 0, 2), (.input, 123, 4)]), gaps: GapPolicy(maxRegisterGap: 200, maxBitGap: 0)).requests.count == 2)
        #expect(ReadPlan(items: items([(.discrete, 0, 1), (.discrete, 1999, 1)]), gaps: GapPolicy(maxRegisterGap: 0, maxBitGap: 5000)).requests.count == 1)
        #expect(ReadPlan(items: items([(.discrete, 0, 1), (.discrete, 2000, 1)]), gaps: GapPolicy(maxRegisterGap: 0, maxBitGap: 5000)).requests.count == 2)
        let many = items((0..<300).map { (.holding, $0, 1) })
        let plan = ReadPlan(items: many, gaps: .tcp)
        #expect(plan.requests.map(\.count) == [125, 125, 50])
    }

    @Test("overlapping and duplicate items share one request; tables never mix")
    func overlaps() {
        let plan = ReadPlan(items: items([(.holding, 0, 4), (.holding, 2, 1), (.holding, 2, 2), (.input, 0, 1)]), gaps: .none)
        #expect(plan.requests.count == 2)
        #expect(plan.requests.first { $0.kind == .holding }?.count == 4)
    }

    @Test("split after ILLEGAL DATA ADDRESS: first drop bridged gaps, then one item each")
    func split() {
        var plan = ReadPlan(items: items([(.holding, 0, 2), (.holding, 10, 1), (.holding, 11, 1)]), gaps: .tcp)
        #expect(plan.requests.count == 1)
        var ok = plan.split(plan.requests[0])
        #expect(ok)
        #expect(plan.requests.map(\.description) == ["FC3 holding 0..1 (2)", "FC3 holding 10..11 (2)"])
        ok = plan.split(plan.requests[1])
        #expect(ok)
        #expect(plan.requests.count == 3)
        ok = plan.split(plan.requests[2])
        #expect(ok == false)
    }
}
