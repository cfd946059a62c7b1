/* p11.h: the one place that includes the OASIS PKCS#11 2.40 headers.
 * Defines the platform macros pkcs11.h asks for on Unix (identical to the
 * defaults the bundled header would pick, so redefinition is benign). */
#ifndef P11BRIDGE_P11_H
#define P11BRIDGE_P11_H

#ifndef CK_PTR
#define CK_PTR *
#endif
#ifndef CK_DEFINE_FUNCTION
#define CK_DEFINE_FUNCTION(returnType, name) returnType name
#endif
#ifndef CK_DECLARE_FUNCTION
#define CK_DECLARE_FUNCTION(returnType, name) returnType name
#endif
#ifndef CK_DECLARE_FUNCTION_POINTER
#define CK_DECLARE_FUNCTION_POINTER(returnType, name) returnType(*name)
#endif
#ifndef CK_CALLBACK_FUNCTION
#define CK_CALLBACK_FUNCTION(returnType, name) returnType(*name)
#endif
#ifndef NULL_PTR
#define NULL_PTR 0
#endif

#include "pkcs11.h"

#endif
