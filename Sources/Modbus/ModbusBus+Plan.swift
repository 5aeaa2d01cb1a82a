extension ModbusBus {
    /// The outcome of one item of a poll: the bits or registers of that item alone.
    public typealias ItemResult = Result<ReadResult, ModbusError>

    /// Requests one poll sends at most. A plan's requests only ever split (a merged read refused
    /// with ILLEGAL DATA ADDRESS), down to one per item, so a poll is bounded by its items; this
    /// is a backstop against a plan that keeps splitting (a device's 65,536 registers of each
    /// of the four kinds is 262,144).
    static let maxRequestsPerPoll = 262_144

    /// Runs every request of `plan` against `unit` and slices the answers per item.
    ///
    /// A merged request answered with ILLEGAL DATA ADDRESS is split (the split stays in `plan`, so
    /// later polls use it) and its parts are read in the same poll: points that work keep working
    /// and only the bad address fails. Once the device does not answer at all (timeout, no
    /// connection), the rest of the plan fails with the same error without being sent.
    public func poll(_ plan: inout ReadPlan, unit: Int, priority: RequestPriority = .normal,
                     deadline: ContinuousClock.Instant? = nil) async -> [Int: ItemResult] {
        var results: [Int: ItemResult] = [:]
        var pending = plan.requests
        var sent = 0
        while !pending.isEmpty, sent < Self.maxRequestsPerPoll {
            sent += 1
            let request = pending.removeFirst()
            do {
                let answer = try await read(request.kind, unit: unit, address: request.address, count: request.count,
                                            priority: priority, deadline: deadline)
                for item in request.items {
                    let lo = item.address - request.address, hi = lo + item.count
                    switch answer {
                    case .bits(let b): results[item.id] = .success(.bits(Array(b[lo..<hi])))
                    case .registers(let r): results[item.id] = .success(.registers(Array(r[lo..<hi])))
                    }
                }
            } catch let error as ModbusError {
                if case .exception(.illegalDataAddress, _) = error, request.items.count > 1, plan.split(request) {
                    let parts = plan.requests.filter { part in part.items.allSatisfy { request.items.contains($0) } }
                    pending.insert(contentsOf: parts, at: 0)
                    continue
                }
                for item in request.items { results[item.id] = .failure(error) }
                if error.isNoAnswer {
                    // The device did not answer: asking it for the rest would cost a timeout each.
                    for rest in pending { for item in rest.items { results[item.id] = .failure(error) } }
                    pending.removeAll()
                }
            } catch {
                for item in request.items { results[item.id] = .failure(.closed) }
            }
        }
        return results
    }
}
