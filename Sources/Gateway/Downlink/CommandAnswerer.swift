import Logging
import MQTT

/// Where a command's answer goes. The live one is ``BrokerAnswerer``; an in-process test records.
protocol CommandAnswerer: Sendable {
    /// Publishes `answer` to the MQTT 5 response topic of `message` (with its correlation data)
    /// when it has one, else to `fallback` (nil: not answered).
    func answer(_ answer: CommandAnswer, to message: MQTTMessage, fallback: String?, logger: Logger) async
}

/// Answers through the broker, while it is connected.
struct BrokerAnswerer: CommandAnswerer {
    let client: MQTTClient
    /// The gateway's base topic: no answer is published under it but to a `/set/result`.
    let base: String

    /// Why an MQTT 5 response topic is not used (nil: it is fine). An answer published there
    /// could be taken for something else: a topic filter with wildcards, any command topic
    /// (`.../set`, `.../get`), or anything under the gateway's own base but a `/set/result`.
    static func refusedResponseTopic(_ topic: String, base: String) -> String? {
        if topic.contains("+") || topic.contains("#") { return "it has wildcards" }
        if topic.hasSuffix("/set") || topic.hasSuffix("/get") || topic == "set" || topic == "get" { return "it is a command topic" }
        if (topic == base || topic.hasPrefix(base + "/")) && !topic.hasSuffix("/set/result") {
            return "it is under the gateway's base topic \(base)"
        }
        return nil
    }

    func answer(_ answer: CommandAnswer, to message: MQTTMessage, fallback: String?, logger: Logger) async {
        var props = MQTTProperties()
        var note: String?
        let topic: String
        if let rt = message.properties.responseTopic, let why = Self.refusedResponseTopic(rt, base: base) {
            // Never publish an answer where it could be taken for a command or a value.
            logger.warning("response topic \(rt.logSafe) of \(message.topic.logSafe) refused: \(why)")
            guard let fallback else { return }
            topic = fallback
            note = "response topic refused: \(why); answered here instead"
        } else if let rt = message.properties.responseTopic {
            topic = rt
            props.correlationData = message.properties.correlationData
        } else if let fallback {
            topic = fallback
        } else {
            return
        }
        // Not kept for later: nobody waits for an answer after the broker is back, and it must
        // not push telemetry out of the offline queue.
        guard await client.isConnected else {
            logger.info("answer to \(topic.logSafe) not sent: the broker is away")
            return
        }
        do {
            try await client.enqueue(to: topic, payload: Array(answer.json(note: note).utf8), qos: .atLeastOnce, retain: false, properties: props)
        } catch {
            logger.warning("answer to \(topic.logSafe) not published: \(error)")
        }
    }
}
