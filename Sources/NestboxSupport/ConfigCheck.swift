// `--check-config`, every program's configuration check (as `postconf -n` and `doveconf -n`):
// prints the configuration in force as `key: value` lines (the keys the file or `-o` set, or
// with `--all-keys` every key), then checks what parsing alone cannot: the accounts, groups and
// directories the keys name, and the rules between keys. Problems go to standard error, each
// naming the key as written and its `file:line` (Config.describe); an error makes the exit
// status 78 (EX_CONFIG), warnings alone leave it 0.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public struct ConfigCheck {
    public let config: Config
    public private(set) var errors: [String] = []
    public private(set) var warnings: [String] = []

    public init(_ config: Config) {
        self.config = config
        run()
    }

    /// The listing: a comment naming the source, then `key: value` lines in the key table's order.
    public func listing(all: Bool) -> String {
        var text = "# \(config.source)\n"
        for key in all ? Config.keys : config.keysSet {
            let value = config.string(key.name)
            text += value.isEmpty ? "\(key.name):\n" : "\(key.name): \(value)\n"
        }
        return text
    }

    private mutating func error(_ key: String, _ reason: String) { errors.append(config.describe(key, reason)) }
    private mutating func warning(_ key: String, _ reason: String) { warnings.append(config.describe(key, reason)) }

    private mutating func run() {
        for key in Config.keys where !Config.commentHint(config.string(key.name)).isEmpty {
            warning(key.name, "holds a \"#\" after a space")
        }
        // The mail owner and what it must be able to use.
        let owner = Privileges.lookup(config.mailOwner)
        if owner == nil {
            error("mail_owner", "no such user")
        } else if owner!.uid == 0 {
            error("mail_owner", "refusing to deliver as root (uid 0)")
        }
        let who = owner.map { Access.Who.account($0) }
        if let owner, let who {
            checkMailRoot(owner, who)
        }
        // The socket's accounts.
        if !config.string("lmtpsocket_owner").isEmpty && Privileges.lookup(config.string("lmtpsocket_owner")) == nil {
            error("lmtpsocket_owner", "no such user")
        }
        let group = config.string("lmtpsocket_group")
        if !group.isEmpty && getgrnam(group) == nil {
            error("lmtpsocket_group", "no such group")
        }
        if config.string("lmtpsocket").isEmpty && config.string("lmtp_listen").isEmpty {
            warning("lmtpsocket", "and lmtp_listen are both empty: nestbox-lmtpd can only run from systemd sockets or with -i")
        }
        // Rules between keys.
        if config.autocreatePost && config.autocreateQuota < 0 {
            warning("autocreate_post", "is on, but autocreate_quota is -1, which turns autocreation off: "
                + "unknown users are refused (5.1.1); set autocreate_quota to 0 for no limit")
        }
        if config.virtDomains == .off && !config.string("defaultdomain").isEmpty {
            warning("defaultdomain", "has no effect with virtdomains off")
        }
        if config.autocreateOnlySASLUsers && access(config.saslDatabasePath, R_OK) != 0 {
            warning("sasl_sasldb_path", "cannot be read (\(errnoText(errno))), and autocreate_users is sasldb: "
                + "no INBOX can be created until it can")
        }
        let saslGroup = config.string("sasl_sasldb_group")
        if !saslGroup.isEmpty && getgrnam(saslGroup) == nil {
            warning("sasl_sasldb_group", "no such group: nestbox-passwd cannot create the SASL database")
        }
        let mboxSpool = config.string("mbox_spool_directory")
        if !mboxSpool.isEmpty && !Files.isDirectory(mboxSpool) {
            error("mbox_spool_directory", "is not a directory")
        }
        checkLogFile(who)
    }

    /// The mail root exists (or can be made), belongs to the mail owner and lets it in and write;
    /// so does Nestbox's own directory in it.
    private mutating func checkMailRoot(_ owner: Privileges.Account, _ who: Access.Who) {
        let root = config.partition
        var st = stat()
        if stat(root, &st) != 0 {
            guard errno == ENOENT else {
                return error("partition-default", errnoText(errno))
            }
            var above = Files.directoryName(root)
            while above != "/" && stat(above, &st) != 0 { above = Files.directoryName(above) }
            if Access.directoryProblem(above, label: "", for: who, writable: true) != nil {
                error("partition-default", "does not exist, and \(config.mailOwner) cannot create it")
            } else {
                warning("partition-default", "does not exist yet (the first delivery creates it)")
            }
            return
        }
        if let problem = Access.directoryProblem(root, label: "mail root", for: who, writable: true) {
            return error("partition-default", "\(problem) (mail_owner is \(config.mailOwner))")
        }
        if st.st_uid != owner.uid {
            warning("partition-default", "does not belong to mail_owner \(config.mailOwner) (\(Access.ownerAndMode(st)))")
        }
        let own = "\(root)/.nestbox"
        for dir in [own, "\(own)/spool", "\(own)/create", "\(own)/duplicates"] where Files.isDirectory(dir) {
            if let problem = Access.directoryProblem(dir, label: "directory", for: who, writable: true) {
                return error("partition-default", "\(problem) (mail_owner is \(config.mailOwner))")
            }
        }
    }

    /// A log file must be writable by the mail owner: nestbox-deliver runs as it.
    private mutating func checkLogFile(_ who: Access.Who?) {
        guard case .file(let path) = config.logDestination, let who else { return }
        var st = stat()
        if stat(path, &st) == 0 {
            if (st.st_mode & S_IFMT) != S_IFREG {
                error("log_file", "is not a regular file")
            } else if !Access.permits(st, who, Access.write) {
                error("log_file", "not writable by \(who.label) (\(Access.ownerAndMode(st))); mail_owner is \(config.mailOwner)")
            }
        } else if let problem = Access.directoryProblem(Files.directoryName(path), label: "its directory", for: who,
                                                        writable: true, missingIsProblem: true) {
            error("log_file", "does not exist, and \(config.mailOwner) cannot create it: \(problem)")
        }
    }
}
