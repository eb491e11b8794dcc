// nestbox-lmtpd's channel handlers: one LMTPHandler per connection, feeding its LMTPSession
// on the thread pool one batch of input at a time (reading paused meanwhile: the back
// pressure), writing the replies, and handling idle time-outs, end of input and shutdown; a
// RefuseHandler for a connection over the limit or during shutdown.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Dispatch
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NestboxLMTP
import NestboxStore
import NestboxSupport

/// Refuses a connection over the limit or during shutdown.
final class RefuseHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let serverName: String
    init(serverName: String) { self.serverName = serverName }

    func channelActive(context: ChannelHandlerContext) {
        let buffer = context.channel.allocator.buffer(string: LMTPReply.tooManyConnections(serverName) + "\r\n")
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in context.close(promise: nil) }
    }
}

/// Moves bytes between the socket and the session; the end of each message (syncs, commit)
/// runs on the thread pool, everything else on the event loop.
final class LMTPHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let session: LMTPSession
    let pool: NIOThreadPool
    unowned let server: LMTPServer
    private var context: ChannelHandlerContext? = nil
    private var queued: [UInt8] = []
    private var busy = false
    private var closing = false
    private var inactive = false
    /// The client will send nothing more: once the input already read is answered, the session ends.
    private var inputClosed = false

    init(session: LMTPSession, pool: NIOThreadPool, server: LMTPServer) {
        self.session = session
        self.pool = pool
        self.server = server
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func channelActive(context: ChannelHandlerContext) {
        write(session.greeting(), context: context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        if let bytes = buffer.readBytes(length: buffer.readableBytes) { queued.append(contentsOf: bytes) }
        if !busy {
            process(context: context)
        } else if queued.count > LMTPHandler.backPressureBytes && !readingPaused {
            // The store is slower than the client: stop reading until the session catches up.
            readingPaused = true
            context.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
        }
    }

    /// Input beyond this waiting for the session pauses reading from the socket.
    static let backPressureBytes = 1 << 20
    private var readingPaused = false

    /// Runs the session over the input read so far: on the event loop up to the end of a
    /// message (LMTPSession.feedUntilBlocking), and from there on the thread pool, where the
    /// syncs and the commit round may block.
    private func process(context: ChannelHandlerContext) {
        guard !queued.isEmpty, !closing else { return }
        let input = queued
        queued = []
        var out: [UInt8] = []
        if session.feedUntilBlocking(input[...], into: &out) {
            answered(out, context: context)
            return
        }
        if !out.isEmpty { write(out, context: context) }
        busy = true
        let session = self.session
        pool.runIfActive(eventLoop: context.eventLoop) { () -> [UInt8] in
            var out: [UInt8] = []
            session.feed([], into: &out)
            return out
        }.whenComplete { [self] result in
            busy = false
            if inactive {
                session.connectionLost()
                return
            }
            switch result {
            case .success(let out):
                answered(out, context: context)
            case .failure(let error):
                Log.error("\(session.sessionID): \(error)")
                write(session.close(reason: LMTPReply.internalError(session.serverName)), context: context)
                closeAfterFlush(context: context)
            }
        }
    }

    /// Sends the replies to a batch of input and goes on with what came meanwhile.
    private func answered(_ out: [UInt8], context: ChannelHandlerContext) {
        if !out.isEmpty { write(out, context: context) }
        if session.isClosed {
            closeAfterFlush(context: context)
        } else if server.isDraining && !session.inTransaction {
            write(session.close(reason: LMTPReply.shuttingDown(session.serverName)), context: context)
            closeAfterFlush(context: context)
        } else if !queued.isEmpty {
            process(context: context)
        } else if inputClosed {
            endOfInput(context: context)
        }
        if readingPaused && queued.count <= LMTPHandler.backPressureBytes && !closing {
            readingPaused = false
            context.channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
        }
    }

    /// The last write's completion: the close waits for it, so that no reply is cut off.
    private var lastWrite: EventLoopFuture<Void>? = nil

    private func write(_ bytes: [UInt8], context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        lastWrite = context.writeAndFlush(wrapOutboundOut(buffer))
    }

    private func closeAfterFlush(context: ChannelHandlerContext) {
        guard !closing else { return }
        closing = true
        guard let lastWrite else { return context.close(promise: nil) }
        lastWrite.whenComplete { _ in context.close(promise: nil) }
    }

    /// Everything read before the end of input is answered: the session ends here (nothing
    /// half-received is stored) and the connection closes after the replies.
    private func endOfInput(context: ChannelHandlerContext) {
        guard !busy, queued.isEmpty, !closing else { return }
        session.connectionLost()
        closeAfterFlush(context: context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, e == .inputClosed {
            inputClosed = true
            endOfInput(context: context)  // now if idle; else when the work in flight is done
            return
        }
        if let e = event as? IdleStateHandler.IdleStateEvent, e == .read, !busy {
            if closing {
                // Closing, but the client has not taken its replies for the idle timeout.
                context.close(promise: nil)
                return
            }
            Log.info("\(session.sessionID): idle timeout, closing")
            write(session.close(reason: LMTPReply.idleTimeout(session.serverName)), context: context)
            closeAfterFlush(context: context)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// Shutdown: close now if nothing is in flight; otherwise the end of the work does it.
    func drain() {
        guard let context else { return }
        context.eventLoop.execute { [self] in
            if !busy && !session.inTransaction && !closing {
                write(session.close(reason: LMTPReply.shuttingDown(session.serverName)), context: context)
                closeAfterFlush(context: context)
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        closing = true
        inactive = true
        // While the pool still works on this session, the end of that work does this.
        if !busy { session.connectionLost() }
        Log.info("\(session.sessionID): disconnect")
        server.connectionClosed(self)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        Log.warning("\(session.sessionID): \(error)")
        closeAfterFlush(context: context)
    }
}
