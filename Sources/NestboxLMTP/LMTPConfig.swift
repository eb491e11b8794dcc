// The configuration keys only the LMTP side reads, typed. The keys themselves, their defaults
// and their rules stay in the one key table (NestboxSupport/Config.swift), so that every program
// rejects the same bad file; only the accessors live here, next to their readers.

import NestboxSupport

extension Config {
    /// UNIX socket of nestbox-lmtpd; empty: none.
    public var lmtpSocket: String { string("lmtpsocket") }
    public var lmtpSocketMode: Int { Int(string("lmtpsocket_mode"), radix: 8)! }
    /// Empty in the file means the mail owner.
    public var lmtpSocketOwner: String { string("lmtpsocket_owner").isEmpty ? mailOwner : string("lmtpsocket_owner") }
    public var lmtpSocketGroup: String { string("lmtpsocket_group") }
    public var lmtpListeners: [Listener] { string("lmtp_listen").split(separator: " ").compactMap { Listener.parse(String($0)) } }
    public var lmtpMaxConnections: Int { Int(integer("lmtp_max_connections")) }
    /// Seconds a session may stay silent.
    public var lmtpIdleTimeout: Int64 { integer("lmtp_idle_timeout") }
    public var lmtpMaxRecipients: Int { Int(integer("lmtp_max_recipients")) }
}
