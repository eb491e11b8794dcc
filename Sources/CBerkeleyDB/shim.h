// Berkeley DB 5.3 (Debian: libdb5.3-dev), the format of Cyrus SASL's sasldb2 on Debian.
#include <db.h>
