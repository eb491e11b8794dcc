// Berkeley DB 5.3 (Debian: libdb5.3-dev), the format of Cyrus SASL's sasldb2 on Debian.
// Types and constants only: the library is loaded at run time (NestboxSASLDB/SASLDatabase.swift).
#include <db.h>
