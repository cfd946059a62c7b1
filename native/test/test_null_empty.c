/* test_null_empty.c: calls whose template or buffer is a valid pointer with
 * count 0, or NULL, made on any PKCS#11 module; the integration tests run it
 * on SoftHSM2 directly and through libp11bridge.so and compare the lines.
 * (google/pkcs11test's ReadWriteSessionTest.CreateCopyDestroyObject makes
 * the first ones.)
 *
 *   test_null_empty <module.so> <token label> <user PIN>
 * stdout: one line per call, "<call> <rv in hex>". */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "p11.h"

static CK_FUNCTION_LIST_PTR f;

static int find_slot(const char *label, CK_SLOT_ID *slot) {
  CK_SLOT_ID slots[32];
  CK_ULONG n = 32;
  if (f->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK) return -1;
  for (CK_ULONG i = 0; i < n; i++) {
    CK_TOKEN_INFO ti;
    if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK) continue;
    size_t l = strlen(label);
    if (l <= 32 && !memcmp(ti.label, label, l) && (l == 32 || ti.label[l] == ' ')) {
      *slot = slots[i];
      return 0;
    }
  }
  return -1;
}

#define SHOW(what, call) printf("%s 0x%lx\n", what, (unsigned long)(call))

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: test_null_empty <module.so> <token label> <user PIN>\n");
    return 2;
  }
  void *h = dlopen(argv[1], RTLD_NOW);
  if (!h) {
    fprintf(stderr, "dlopen: %s\n", dlerror());
    return 2;
  }
  CK_C_GetFunctionList gfl;
  *(void **)&gfl = dlsym(h, "C_GetFunctionList");
  CK_SLOT_ID slot;
  CK_SESSION_HANDLE s;
  if (!gfl || gfl(&f) != CKR_OK || f->C_Initialize(NULL) != CKR_OK || find_slot(argv[2], &slot) ||
      f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s) != CKR_OK ||
      f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)argv[3], strlen(argv[3])) != CKR_OK) {
    fprintf(stderr, "cannot set up a logged-in session on token %s\n", argv[2]);
    return 2;
  }
  CK_OBJECT_CLASS cls = CKO_DATA;
  CK_BBOOL no = CK_FALSE;
  CK_BYTE value[] = "null-empty";
  CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_TOKEN, &no, sizeof no}, {CKA_VALUE, value, sizeof value - 1}};
  CK_OBJECT_HANDLE obj, copy;
  SHOW("C_CreateObject(data object)", f->C_CreateObject(s, t, 3, &obj));
  CK_ATTRIBUTE none[1]; /* a valid pointer; count 0 */
  SHOW("C_CopyObject(template, 0)", f->C_CopyObject(s, obj, none, 0, &copy));
  SHOW("C_CopyObject(NULL, 0)", f->C_CopyObject(s, obj, NULL, 0, &copy));
  SHOW("C_SetAttributeValue(template, 0)", f->C_SetAttributeValue(s, obj, none, 0));
  SHOW("C_SetAttributeValue(NULL, 0)", f->C_SetAttributeValue(s, obj, NULL, 0));
  SHOW("C_CreateObject(template, 0)", f->C_CreateObject(s, none, 0, &copy));
  SHOW("C_CreateObject(NULL, 0)", f->C_CreateObject(s, NULL, 0, &copy));
  SHOW("C_GetAttributeValue(template, 0)", f->C_GetAttributeValue(s, obj, none, 0));
  SHOW("C_GetAttributeValue(NULL, 0)", f->C_GetAttributeValue(s, obj, NULL, 0));
  CK_BYTE buf[1];
  SHOW("C_GenerateRandom(buffer, 0)", f->C_GenerateRandom(s, buf, 0));
  SHOW("C_GenerateRandom(NULL, 0)", f->C_GenerateRandom(s, NULL, 0));
  SHOW("C_FindObjectsInit(template, 0)", f->C_FindObjectsInit(s, none, 0));
  SHOW("C_FindObjectsFinal", f->C_FindObjectsFinal(s));
  SHOW("C_FindObjectsInit(NULL, 0)", f->C_FindObjectsInit(s, NULL, 0));
  SHOW("C_FindObjectsFinal", f->C_FindObjectsFinal(s));
  CK_BYTE empty[1];
  SHOW("C_DigestInit(SHA256)", f->C_DigestInit(s, &(CK_MECHANISM){CKM_SHA256, NULL, 0}));
  CK_BYTE digest[32];
  CK_ULONG dlen = sizeof digest;
  SHOW("C_Digest(data, 0)", f->C_Digest(s, empty, 0, digest, &dlen));
  SHOW("C_DestroyObject", f->C_DestroyObject(s, obj));
  f->C_Logout(s);
  f->C_CloseSession(s);
  SHOW("C_Finalize", f->C_Finalize(NULL));
  return 0;
}
