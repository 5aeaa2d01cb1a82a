import GatewayConfig
import Logging
import MQTT
import Synchronization

/// Home Assistant discovery at run time (`[homeassistant] enabled`, the default). One task:
/// - at the first connect it reads the device configs already retained under
///   `<prefix>/device/+/config` (for at most ``scanWindow``, ``scanLimit`` configs and
///   ``scanBytes`` bytes; retained messages come right after the SUBACK), clears those an
///   earlier run of this gateway published for devices no longer configured (empty retained
///   payload), and publishes every config, marking components that were removed from a device
///   with their platform only. A config is this gateway's only if its device, or the device it
///   is reached through (`via_device`), is exactly this gateway's device;
/// - at every later connect it publishes every config again (QoS 1, retained);
/// - when Home Assistant says `online` on its birth topic (`homeassistant/status`, after a
///   restart), it publishes every config again after a random 1-4 s (Home Assistant is not ready
///   the instant it says so), then the statuses, and makes every poller publish its current
///   values: the first birth after each connect always, later ones at most once per
///   ``birthInterval`` (anyone who can publish there could otherwise make it republish
///   everything every few seconds).
/// - after a reload (``reload(from:to:)``) it publishes the configs of added and changed devices
///   (components a changed device lost are marked removed) and clears those of removed devices.
/// None of it runs on the poll or command paths.
final class HomeAssistantPublisher: Sendable {
    enum Trigger: Sendable {
        case connected, homeAssistantOnline
        /// A reload replaced this configuration.
        case reloaded(GatewayConfiguration)
    }

    /// The payloads are built when they are published (at connect, after Home Assistant's
    /// birth) and not kept: at 100 devices they are several hundred KiB of strings.
    private let configuration: Mutex<GatewayConfiguration>
    private let topics: TopicLayout
    private let version: String
    private let prefix: String
    /// `<prefix>/device/`, kept: ``handles(_:)`` runs for every message the gateway receives.
    private let deviceTopicPrefix: String
    let gatewayID: String
    private let client: MQTTClient
    private let logger: Logger
    private let statusTopic: String
    private let configFilter: String
    private let triggers: AsyncStream<Trigger>
    private let continuation: AsyncStream<Trigger>.Continuation
    /// While scanning: the components of each retained config of ours (nil when not scanning),
    /// when the last config came, and how many configs and bytes came (bounded).
    private let scan = Mutex<Scan>(Scan())
    private struct Scan {
        var ours: [String: [String: String]]?
        var last = ContinuousClock.now
        var count = 0
        var bytes = 0
        var cut = false
    }
    /// After Home Assistant's birth: statuses and values again (the runtime's part).
    private let republish: @Sendable () async -> Void

    static let scanWindow: Duration = .seconds(3)
    static let scanQuiet: Duration = .milliseconds(500)
    /// At most this many retained configs, and bytes of them, are read at start.
    static let scanLimit = 5_000
    static let scanBytes = 16 << 20
    /// Home Assistant's births answered at most once in this time (but the first after a connect always).
    static let birthInterval: Duration = .seconds(30)

    init(configuration: GatewayConfiguration, topics: TopicLayout, version: String, client: MQTTClient, logger: Logger,
         republish: @escaping @Sendable () async -> Void) {
        self.configuration = Mutex(configuration)
        self.topics = topics
        self.version = version
        let prefix = configuration.homeAssistant.prefix
        self.prefix = prefix
        self.gatewayID = configuration.gateway.id
        self.client = client
        var l = logger
        l[metadataKey: "component"] = "homeassistant"
        self.logger = l
        self.statusTopic = configuration.homeAssistant.birthTopic
        self.configFilter = "\(prefix)/device/+/config"
        self.deviceTopicPrefix = "\(prefix)/device/"
        self.republish = republish
        (triggers, continuation) = AsyncStream.makeStream(of: Trigger.self, bufferingPolicy: .bufferingNewest(4))
    }

    /// True for the topics this publisher listens to (the dispatcher hands them here).
    func handles(_ topic: String) -> Bool {
        // Byte comparisons: topics are compared as UTF-8 bytes (MQTT 4.7.3), and a command on its
        // way to a device does not pay for a string built or compared by Unicode rules.
        topic.utf8.elementsEqual(statusTopic.utf8)
            || (topic.utf8.starts(with: deviceTopicPrefix.utf8) && topic.utf8.suffix(7).elementsEqual("/config".utf8))
    }

    /// A message on one of ``handles(_:)``'s topics. Never waits.
    func receive(_ message: MQTTMessage) {
        if message.topic == statusTopic {
            if message.payload == Array("online".utf8) { continuation.yield(.homeAssistantOnline) }
            return
        }
        let gatewayID = self.gatewayID
        let cut = scan.withLock { s -> Bool in
            guard s.ours != nil, message.retain, !s.cut else { return false }
            s.count += 1
            s.bytes += message.payload.count
            guard s.count <= Self.scanLimit, s.bytes <= Self.scanBytes else {
                s.cut = true
                return true
            }
            s.last = .now
            // Only this gateway's are kept (their components), not whole payloads.
            if let components = Self.components(ofOurs: message.payload, gatewayID: gatewayID) { s.ours?[message.topic] = components }
            return false
        }
        if cut {
            logger.warning("start-up scan of \(configFilter) cut at \(Self.scanLimit) configs or \(Self.scanBytes >> 20) MiB: configs of this gateway beyond it are not checked for removal")
        }
    }

    func connected() { continuation.yield(.connected) }

    /// The running configuration is now `new` (a reload; `[homeassistant]` itself is unchanged).
    func reload(from old: GatewayConfiguration, to new: GatewayConfiguration) {
        configuration.withLock { $0 = new }
        continuation.yield(.reloaded(old))
    }

    private func makeDiscovery() -> HomeAssistantDiscovery {
        HomeAssistantDiscovery(configuration: configuration.withLock { $0 }, topics: topics, version: version)
    }

    func finish() { continuation.finish() }

    func run() async {
        var first = true
        var birthAnswered: ContinuousClock.Instant?   // nil: not yet since the last connect
        for await trigger in triggers {
            switch trigger {
            case .connected:
                birthAnswered = nil
                if first {
                    first = false
                    let removed = await scanEarlierConfigs()
                    await publishConfigs(removing: removed)
                    do {
                        _ = try await client.subscribe([MQTTSubscription(statusTopic, qos: .atLeastOnce)])
                    } catch {
                        logger.warning("cannot subscribe to \(statusTopic): \(error); Home Assistant restarts will not bring the configs back until the next connect")
                    }
                } else {
                    await publishConfigs(removing: [:])
                }
            case .homeAssistantOnline:
                if let last = birthAnswered, ContinuousClock.now - last < Self.birthInterval {
                    logger.info("Home Assistant is online again within \(Self.birthInterval) of the last answer: not republishing")
                    continue
                }
                birthAnswered = .now
                let delay = Duration.milliseconds(Int.random(in: 1_000...4_000))
                logger.info("Home Assistant is online: publishing discovery again in \(delay)")
                do { try await Task.sleep(for: delay) } catch { return }
                await publishConfigs(removing: [:])
                await republish()
            case .reloaded(let old):
                // Before the first connect there is nothing to correct: that connect publishes all.
                guard !first else { continue }
                await publishChanges(since: HomeAssistantDiscovery(configuration: old, topics: topics, version: version))
            }
        }
    }

    /// After a reload: the configs that differ from `old`'s, and empty ones for devices gone.
    private func publishChanges(since old: HomeAssistantDiscovery) async {
        let new = makeDiscovery()
        let before = Dictionary(old.devices.map { ($0.topic, $0) }, uniquingKeysWith: { a, _ in a })
        var published = 0
        for device in new.devices {
            let earlier = before[device.topic]
            var gone: [String: String] = [:]
            for e in earlier?.entities ?? [] where !device.entities.contains(where: { $0.id == e.id }) { gone[e.id] = e.platform }
            let payload = device.payload(removing: gone)
            guard earlier.map({ $0.payload() != device.payload() }) ?? true else { continue }
            try? await client.enqueue(to: device.topic, payload: Array(payload.utf8), qos: .atLeastOnce, retain: true)
            published += 1
        }
        let kept = Set(new.devices.map(\.topic))
        var cleared = 0
        for device in old.devices where !kept.contains(device.topic) {
            try? await client.enqueue(to: device.topic, payload: [], qos: .atLeastOnce, retain: true)
            cleared += 1
        }
        if published + cleared > 0 {
            logger.info("discovery after reload: \(published) device configs published, \(cleared) cleared")
        }
    }

    /// Reads the retained device configs under the prefix; clears the ones this gateway published
    /// for devices it no longer has, and returns, per current device, the components its earlier
    /// config had and this one does not (id -> platform).
    private func scanEarlierConfigs() async -> [String: [String: String]] {
        scan.withLock { $0 = Scan(ours: [:]) }
        do {
            _ = try await client.subscribe([MQTTSubscription(configFilter, qos: .atLeastOnce)])
        } catch {
            scan.withLock { $0.ours = nil }
            logger.warning("cannot read earlier discovery configs (\(error)): stale ones are not cleared")
            return [:]
        }
        let start = ContinuousClock.now
        while ContinuousClock.now - start < Self.scanWindow {
            let quietSince = scan.withLock { $0.last }
            if ContinuousClock.now - quietSince >= Self.scanQuiet { break }
            do { try await Task.sleep(for: .milliseconds(100)) } catch { break }
        }
        _ = try? await client.unsubscribe([configFilter])
        let seen = scan.withLock { s -> [String: [String: String]] in
            defer { s = Scan() }
            return s.ours ?? [:]
        }
        let current = Dictionary(uniqueKeysWithValues: makeDiscovery().devices.map { ($0.topic, Set($0.entities.map(\.id))) })
        var removed: [String: [String: String]] = [:]
        for (topic, earlier) in seen.sorted(by: { $0.key < $1.key }) {
            if let kept = current[topic] {
                let gone = earlier.filter { !kept.contains($0.key) && $0.value.count > 0 }
                if !gone.isEmpty { removed[topic] = gone }
            } else {
                logger.notice("clearing the discovery config of a device no longer configured: \(topic)")
                try? await client.enqueue(to: topic, payload: [], qos: .atLeastOnce, retain: true)
            }
        }
        return removed
    }

    private func publishConfigs(removing removed: [String: [String: String]]) async {
        let discovery = makeDiscovery()
        for device in discovery.devices {
            let payload = device.payload(removing: removed[device.topic] ?? [:])
            try? await client.enqueue(to: device.topic, payload: Array(payload.utf8), qos: .atLeastOnce, retain: true)
        }
        logger.info("discovery published: \(discovery.devices.count) devices, \(discovery.devices.reduce(0) { $0 + $1.entities.count }) entities under \(discovery.prefix)/device/")
    }

    /// The components (id -> platform) of a retained config this gateway published (its origin,
    /// and its device or `via_device` exactly this gateway's device), or nil when it is someone
    /// else's: gateway `lobby` never takes gateway `lobby_east`'s. A component already marked
    /// removed (only its platform) is reported with an empty platform.
    static func components(ofOurs payload: [UInt8], gatewayID: String) -> [String: String]? {
        guard !payload.isEmpty, case .object(let root)? = try? JSONValue.parse(payload) else { return nil }
        func member(_ o: [(String, JSONValue)], _ k: String) -> JSONValue? { o.first { $0.0 == k }?.1 }
        // This release's id of the gateway's device, and the one before it (the same unless the
        // gateway id has a `_`), so that an upgrade still clears what the earlier one left.
        let mine: Set<String> = [HomeAssistantDiscovery.gatewayDeviceID(gatewayID), "\(gatewayID)_gateway"]
        guard case .object(let origin)? = member(root, "origin") ?? member(root, "o"),
              case .string(HomeAssistantDiscovery.originName)? = member(origin, "name"),
              case .object(let device)? = member(root, "device") ?? member(root, "dev"),
              case .object(let cmps)? = member(root, "components") ?? member(root, "cmps") else { return nil }
        let via: String? = if case .string(let v)? = member(device, "via_device") ?? member(device, "via_dev") { v } else { nil }
        let ids: [String] = if case .array(let a)? = member(device, "identifiers") ?? member(device, "ids") {
            a.compactMap { if case .string(let s) = $0 { s } else { nil } }
        } else { [] }
        guard via.map(mine.contains) == true || ids.contains(where: mine.contains) else { return nil }
        var out: [String: String] = [:]
        for (id, value) in cmps {
            guard case .object(let c) = value, case .string(let platform)? = member(c, "platform") ?? member(c, "p") else { continue }
            out[id] = c.count == 1 ? "" : platform
        }
        return out
    }
}

/// Discovery as a feature: its own task, its own subscriptions' messages, a publish at every
/// connect and after a reload.
extension HomeAssistantPublisher: GatewayFeature {
    func takes(_ topic: String) -> Bool { handles(topic) }
    func brokerConnected() async { connected() }
    func reloaded(from old: GatewayConfiguration, to new: GatewayConfiguration) { reload(from: old, to: new) }
    func stopping() async { finish() }
}
