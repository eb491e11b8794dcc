// Cyrus SASL (Debian: libsasl2-dev). saslutil.h needs sasl.h first.
#include <sasl/sasl.h>
#include <sasl/saslutil.h>
#include <sasl/prop.h>
