// One delivery transaction: the envelope (sender, recipients), the message bytes, and the
// outcome of each recipient. Both front ends only feed it: nestbox-deliver from its command
// line and standard input, the LMTP session from MAIL, RCPT and DATA/BDAT. Everything else
// happens here, once:
//
// 1. Each recipient is resolved when it is added (Delivery.resolve); a refusal is logged and
//    thrown for the front end to answer (an LMTP RCPT reply, or deliver's exit status).
// 2. The message is spooled once, with `Return-Path:` and a `Received:` line first
//    (Spool.swift). Where: a single recipient whose folder exists gets the spool file in its
//    folder's tmp/, renamed into new/ when stored (no link, no second inode); otherwise
//    `<root>/.nestbox/spool/`, linked into each folder (a copy across file systems).
// 3. When the message is complete, it is stored into each recipient's folder in order
//    (Delivery.store: duplicate check, quota, the move into new/ under the uidlist lock), one
//    log line per recipient, and the spool file is removed.
// 4. `abandon()` (RSET, a lost connection, a refused message) removes whatever was spooled.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxSupport

public final class DeliveryTransaction {
    /// How the message arrived, for its `Received:` line.
    public enum Trace: Sendable {
        /// Handed over on standard input (nestbox-deliver).
        case local
        /// Over LMTP from `helo` at `client`.
        case lmtp(helo: String, client: String)
    }

    public struct Recipient: Sendable {
        /// As given (RCPT path, deliver's argument, or `public/<folder>`).
        public var address: String
        public var target: DeliveryTarget
        public var ignoreQuota: Bool
        public var isShared: Bool
    }

    public let delivery: Delivery
    /// The queue id of the log lines (`<id>: from=<...> to=<...> status=...`).
    public let id: String
    /// The queue id of the MTA that handed the message over (Postfix's `${queue_id}`), for the
    /// `Received:` line and the log lines, so that one grep follows the message.
    public var queueID: String? = nil
    /// The envelope sender (empty: the null sender; nil: none given, no Return-Path added).
    public let sender: String?
    public private(set) var recipients: [Recipient] = []
    /// How many recipients were asked for, accepted or not.
    private var attempted = 0
    private var spool: SpoolWriter? = nil
    private var spoolFolder: String? = nil
    private var spoolFailure: NestboxFailure? = nil
    private var finished = false

    public init(delivery: Delivery, id: String, sender: String?) {
        self.delivery = delivery
        self.id = id
        self.sender = sender
    }

    deinit { abandon() }

    // MARK: Recipients

    /// Resolves a personal recipient (`folder` is deliver's -m; it wins over a +detail) and
    /// accepts it. With `checkQuota`, a mailbox already over quota (or, with strict quota, too
    /// full for `declaredSize`) is refused now. A refusal is logged and thrown.
    public func addRecipient(_ address: String, folder: String? = nil, identity: String? = nil, ignoreQuota: Bool = false,
                             checkQuota: Bool = false, declaredSize: Int64? = nil) throws {
        attempted += 1
        do {
            let target = try delivery.resolve(address, folderName: folder, identity: identity)
            if checkQuota && !ignoreQuota, let refusal = try delivery.quotaRefusal(target, incomingSize: declaredSize) {
                throw refusal
            }
            recipients.append(Recipient(address: address, target: target, ignoreQuota: ignoreQuota, isShared: false))
        } catch {
            throw refuse(address, error)
        }
    }

    /// Accepts a shared folder (deliver -m without users) as a recipient.
    public func addSharedFolder(_ name: String, identity: String? = nil, ignoreQuota: Bool = false) throws {
        attempted += 1
        do {
            let target = try delivery.resolveShared(name, domain: nil, identity: identity)
            recipients.append(Recipient(address: target.recipient, target: target, ignoreQuota: ignoreQuota, isShared: true))
        } catch {
            throw refuse(name, error)
        }
    }

    private func refuse(_ address: String, _ error: Error) -> NestboxFailure {
        let f = (error as? NestboxFailure) ?? NestboxFailure(.temporary, "\(error)")
        Log.info(Delivery.logLine(id: id, sender: sender, result: RecipientResult(recipient: address, outcome: f.outcome, detail: f.detail),
                                  message: nil, queueID: queueID))
        return f
    }

    // MARK: The message

    /// Opens the spool for the message, once the recipients are known. A failure is kept and
    /// given to every recipient at `finish()` (the bytes are still accepted and dropped, so
    /// that a protocol front end stays in step with its client).
    public func beginMessage(trace: Trace, maxSize: Int64, headerLimit: Int = SpoolWriter.defaultHeaderLimit) {
        precondition(spool == nil && !finished, "one message per transaction")
        let config = delivery.config
        var received: String
        switch trace {
        case .local:
            received = "Received: by \(config.receivedHost) (Nestbox) with local id \(id)"
            if let queueID { received += " (queue id \(queueID))" }
            if attempted == 1, recipients.count == 1, !recipients[0].isShared,
               let r = try? delivery.store.parseRecipient(recipients[0].address) {
                received += "\n\tfor <\(Names.printable(r.address))>"
            }
        case .lmtp(let helo, let client):
            received = "Received: from \(Names.printable(helo)) (\(client))\n\tby \(config.receivedHost) (Nestbox) with LMTP id \(id)"
            if recipients.count == 1 { received += "\n\tfor <\(Names.printable(recipients[0].address))>" }
        }
        received += "; \(Delivery.rfc5322Date())"
        // One recipient whose folder exists: spool in its tmp/ (renamed into new/ when stored).
        // Several, or an INBOX still to be created: the shared spool, linked into each folder.
        let alone = recipients.count == 1 && recipients[0].target.inboxToCreate == nil
        let folder = alone ? recipients[0].target.folder.path : nil
        do {
            spool = try SpoolWriter(spoolDirectory: folder.map { "\($0)/tmp" } ?? delivery.store.spoolDirectory,
                                    host: config.serverName, returnPath: sender, received: received,
                                    maxSize: maxSize, headerLimit: headerLimit)
            spoolFolder = folder
        } catch {
            spoolFailure = (error as? NestboxFailure) ?? NestboxFailure(.temporary, "\(error)")
        }
    }

    /// Message bytes, in order (CRLF or LF, no dot-stuffing). A failure (disk full, a refused
    /// message) is kept for `finish()`; later bytes are dropped.
    public func append(_ bytes: ArraySlice<UInt8>) {
        guard let writer = spool, spoolFailure == nil, !bytes.isEmpty else { return }
        do {
            try writer.append(bytes)
            try writer.flushIfNeeded()
        } catch {
            spoolFailure = (error as? NestboxFailure) ?? NestboxFailure(.temporary, "\(error)")
            writer.abandon()
            spool = nil
        }
    }

    /// The whole message from a file descriptor (deliver's standard input).
    public func consume(fileDescriptor input: Int32) -> SpooledMessage? {
        guard let writer = spool, spoolFailure == nil else { return nil }
        spool = nil
        do {
            let message = try writer.consume(fileDescriptor: input)
            message.homeFolder = spoolFolder
            return message
        } catch {
            spoolFailure = (error as? NestboxFailure) ?? NestboxFailure(.temporary, "\(error)")
            return nil
        }
    }

    /// The message is complete (or `message` was consumed already): stores it for every
    /// recipient in order, logs one line each, removes the spool file. Returns the outcomes in
    /// recipient order.
    public func finish(_ consumed: SpooledMessage? = nil) -> [RecipientResult] {
        precondition(!finished, "finish() once")
        finished = true
        var message = consumed
        if message == nil, spoolFailure == nil, let writer = spool {
            do {
                message = try writer.finish()
                message?.homeFolder = spoolFolder
            } catch {
                spoolFailure = (error as? NestboxFailure) ?? NestboxFailure(.temporary, "\(error)")
            }
        }
        spool = nil
        var results: [RecipientResult] = []
        for r in recipients {
            var result: RecipientResult
            if let message {
                result = delivery.store(message, into: r.target, ignoreQuota: r.ignoreQuota)
            } else {
                let f = spoolFailure ?? NestboxFailure(.temporary, "no message")
                result = RecipientResult(recipient: r.address, outcome: f.outcome, mailbox: r.target.label, detail: f.detail)
            }
            result.recipient = r.address
            Log.info(Delivery.logLine(id: id, sender: sender, result: result, message: message, queueID: queueID))
            results.append(result)
        }
        message?.remove()
        return results
    }

    /// Drops the transaction: removes whatever was spooled. Safe to call more than once.
    public func abandon() {
        spool?.abandon()
        spool = nil
        finished = true
    }
}
