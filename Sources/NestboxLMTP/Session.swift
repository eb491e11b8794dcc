// One LMTP session (RFC 2033): the state machine between the bytes a client sends and the
// replies it gets; the envelope and the message go to the store's DeliveryTransaction, which
// knows where and how mail is stored (this file knows no paths). No sockets: the server (and
// nestbox-deliver -l, and the tests) feed it bytes and send back what it returns.
//
// - Input is processed strictly in order, so PIPELINING needs nothing special: every command
//   of a pipelined batch gets its reply, in order, in the same output.
// - Framing (command lines and their limit, DATA dot-unstuffing, BDAT octet counts) is the
//   LMTPFramer's (Framer.swift); a too long command line or one with a NUL is `500 5.5.2`.
//   The message streams into the spool as it arrives, so memory does not grow with its size.
// - After the end of the message every accepted recipient gets its own reply, in RCPT order,
//   even when the message was refused as a whole (too big, NUL bytes, broken header): then each
//   gets the same refusal and the transaction ends cleanly.
// - A connection that closes in the middle of a message stores nothing (the spool file is
//   removed); only a complete message is delivered, and only then are replies sent.

import NestboxStore
import NestboxSupport

public final class LMTPSession {
    public struct Limits: Sendable {
        public var maxRecipients: Int
        /// 0: no limit.
        public var maxMessageSize: Int64
        public var headerLimit: Int

        public init(maxRecipients: Int = 500, maxMessageSize: Int64 = 0, headerLimit: Int = SpoolWriter.defaultHeaderLimit) {
            self.maxRecipients = maxRecipients
            self.maxMessageSize = maxMessageSize
            self.headerLimit = headerLimit
        }

        public init(config: Config) {
            self.init(maxRecipients: config.lmtpMaxRecipients, maxMessageSize: config.maxMessageSize)
        }
    }


    public let delivery: Delivery
    public let serverName: String
    public let client: String
    public let sessionID: String
    public let limits: Limits

    private var closed = false
    private var framer = LMTPFramer()
    /// The BDAT chunk being received: its size and whether it is the last.
    private var chunk: (size: Int, last: Bool)? = nil
    private var lhlo: String? = nil
    /// From MAIL to the end of the message (or RSET): the store's delivery transaction.
    private var transaction: DeliveryTransaction? = nil
    private var senderParameters: [Command.Parameter] = []
    private var declaredSize: Int64? = nil
    private var bdatStarted = false
    /// Set when a BDAT chunk is read only to be thrown away (no MAIL or no recipient).
    private var chunkRefusal: String? = nil
    private var transactionCount = 0


    public init(delivery: Delivery, serverName: String, client: String, sessionID: String, limits: Limits) {
        self.delivery = delivery
        self.serverName = serverName
        self.client = client
        self.sessionID = sessionID
        self.limits = limits
    }

    deinit { transaction?.abandon() }

    public var isClosed: Bool {
        closed
    }

    /// A transaction is in flight (MAIL accepted, not yet finished).
    public var inTransaction: Bool { transaction != nil }

    public func greeting() -> [UInt8] {
        Array((LMTPReply.greeting(serverName) + "\r\n").utf8)
    }

    /// The connection went away: nothing half-received is stored.
    public func connectionLost() {
        if transaction != nil {
            Log.info("\(sessionID): lost connection from \(client) in the middle of a transaction; nothing stored")
        }
        resetTransaction()
        closed = true
    }

    /// A reply for the server to send before closing (idle timeout, shutdown).
    public func close(reason: String) -> [UInt8] {
        resetTransaction()
        closed = true
        return Array("\(reason)\r\n".utf8)
    }

    // MARK: Input

    /// Processes input bytes, appending every reply to `output`.
    public func feed(_ bytes: ArraySlice<UInt8>, into output: inout [UInt8]) {
        guard !closed else { return }
        framer.append(bytes)
        if let event = held {
            held = nil
            process(event, &output)
        }
        while !closed, let event = framer.next() { process(event, &output) }
    }

    /// As `feed`, but stops before the first step that waits for the disk (the end of a
    /// message: its syncs and the commit round) and returns false there; the server then calls
    /// `feed` with no new bytes on a thread that may block, which takes it from that step. Every
    /// other step (commands, recipients, message bytes written to the spool) only touches the
    /// page cache, so the server runs them without leaving its event loop.
    public func feedUntilBlocking(_ bytes: ArraySlice<UInt8>, into output: inout [UInt8]) -> Bool {
        guard !closed else { return true }
        framer.append(bytes)
        precondition(held == nil, "feedUntilBlocking with a step still held")
        while !closed, let event = framer.next() {
            if event == .endOfData || (event == .endOfChunk && (chunk?.last ?? true) && chunkRefusal == nil) {
                held = event
                return false
            }
            process(event, &output)
        }
        return true
    }

    /// An event taken from the framer and left for `feed` (see `feedUntilBlocking`).
    private var held: LMTPFramer.Event? = nil

    private func process(_ event: LMTPFramer.Event, _ output: inout [UInt8]) {
        switch event {
        case .command(let line):
            if line.contains(0) {
                reply(&output, LMTPReply.nulInCommand)
            } else {
                handle(Command.parse(String(decoding: line, as: UTF8.self)), &output)
            }
        case .lineTooLong:
            reply(&output, LMTPReply.lineTooLong)
        case .messageBytes(let part):
            writeToSpool(part)
        case .endOfData:
            endMessage(&output)
        case .endOfChunk:
            let (size, last) = chunk ?? (0, true)
            chunk = nil
            endChunk(size: size, last: last, &output)
        }
    }

    private func writeToSpool(_ bytes: ArraySlice<UInt8>) {
        transaction?.append(bytes)
    }

    private func reply(_ output: inout [UInt8], _ line: String) {
        output.append(contentsOf: Array(line.utf8))
        output.append(13)
        output.append(10)
    }

    // MARK: Commands

    private func handle(_ command: Command, _ output: inout [UInt8]) {
        switch command {
        case .lhlo(let name):
            resetTransaction()
            lhlo = name
            for line in LMTPReply.lhlo(host: serverName, maxMessageSize: limits.maxMessageSize) { reply(&output, line) }
        case .helo:
            reply(&output, LMTPReply.useLHLO)
        case .mail(let path, let parameters):
            guard lhlo != nil else { return reply(&output, LMTPReply.sendLHLO) }
            guard transaction == nil else { return reply(&output, LMTPReply.nested) }
            var size: Int64? = nil
            for p in parameters {
                switch p.keyword {
                case "SIZE":
                    guard let v = p.value, let n = Int64(v), n >= 0 else { return reply(&output, LMTPReply.badSize) }
                    size = n
                case "BODY":
                    guard let v = p.value?.uppercased(), v == "7BIT" || v == "8BITMIME" else {
                        return reply(&output, LMTPReply.badBody)
                    }
                case "AUTH", "SMTPUTF8":
                    break
                default:
                    return reply(&output, LMTPReply.unsupported(Names.printable(p.keyword)))
                }
            }
            if let size, limits.maxMessageSize > 0, size > limits.maxMessageSize {
                return reply(&output, LMTPReply.sizeOverLimit(limits.maxMessageSize))
            }
            let address = path.trimmingCharacters()
            if address.unicodeScalars.contains(where: { $0.value < 32 || $0 == "\u{FFFD}" }) {
                return reply(&output, LMTPReply.badSender)
            }
            transactionCount += 1
            transaction = DeliveryTransaction(delivery: delivery, id: "\(sessionID)-\(transactionCount)", sender: address)
            senderParameters = parameters
            declaredSize = size
            reply(&output, LMTPReply.mailOk)
        case .rcpt(let path, let parameters):
            guard let transaction else { return reply(&output, LMTPReply.needMail) }
            var ignoreQuota = false
            for p in parameters {
                if p.keyword == "IGNOREQUOTA" && p.value == nil { ignoreQuota = true }
                else { return reply(&output, LMTPReply.unsupported(Names.printable(p.keyword))) }
            }
            guard transaction.recipients.count < limits.maxRecipients else {
                return reply(&output, LMTPReply.tooManyRecipients)
            }
            do {
                try transaction.addRecipient(path, ignoreQuota: ignoreQuota, checkQuota: true, declaredSize: declaredSize)
                reply(&output, LMTPReply.rcptOk)
            } catch {
                reply(&output, LMTPReply.outcome((error as? NestboxFailure)?.outcome ?? .temporary))
            }
        case .data:
            guard let transaction else { return reply(&output, LMTPReply.needMail) }
            guard !bdatStarted else { return reply(&output, LMTPReply.dataAfterBDAT) }
            guard !transaction.recipients.isEmpty else { return reply(&output, LMTPReply.noRecipients) }
            startSpool()
            framer.startData()
            reply(&output, LMTPReply.startData)
        case .bdat(let size, let last):
            if transaction?.recipients.isEmpty ?? true {
                // The chunk's octets must still be read (RFC 3030); they go nowhere.
                chunkRefusal = transaction == nil ? LMTPReply.needMail : LMTPReply.noRecipients
            } else if !bdatStarted {
                bdatStarted = true
                startSpool()
            }
            chunk = (size, last)
            framer.startChunk(size: size)
        case .rset:
            resetTransaction()
            reply(&output, LMTPReply.ok)
        case .noop:
            reply(&output, LMTPReply.ok)
        case .vrfy:
            reply(&output, LMTPReply.cannotVerify)
        case .help:
            reply(&output, LMTPReply.help)
        case .quit:
            reply(&output, LMTPReply.bye)
            resetTransaction()
            closed = true
        case .starttls:
            reply(&output, LMTPReply.noSTARTTLS)
        case .unknown(let verb):
            reply(&output, LMTPReply.unrecognized(Names.printable(verb)))
        case .syntaxError(_, let reason):
            reply(&output, LMTPReply.syntax(reason))
        }
    }

    private func startSpool() {
        transaction?.beginMessage(trace: .lmtp(helo: lhlo ?? "unknown", client: client),
                                  maxSize: limits.maxMessageSize, headerLimit: limits.headerLimit)
    }

    private func endChunk(size: Int, last: Bool, _ output: inout [UInt8]) {
        if let refusal = chunkRefusal {
            chunkRefusal = nil
            if last { resetTransaction() }
            return reply(&output, refusal)
        }
        if last {
            endMessage(&output)
        } else {
            reply(&output, LMTPReply.octets(size))
        }
    }

    /// The whole message is in: store it for every recipient, one reply each, in RCPT order.
    private func endMessage(_ output: inout [UInt8]) {
        for result in transaction?.finish() ?? [] {
            reply(&output, result.outcome.isSuccess ? LMTPReply.stored(result.detail) : LMTPReply.outcome(result.outcome))
        }
        transaction = nil
        resetTransaction()
    }

    private func resetTransaction() {
        transaction?.abandon()
        transaction = nil
        senderParameters = []
        declaredSize = nil
        bdatStarted = false
    }
}
