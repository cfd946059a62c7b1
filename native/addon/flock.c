/*
 * flock(2) for Node: the guest-side lock that makes each round trip atomic on
 * a serial port shared by several processes. The kernel releases it when its
 * holder dies, so a process killed in the middle of a call never wedges the
 * port. Only non-blocking use is intended (LOCK_NB); callers poll.
 */
#include <errno.h>
#include <sys/file.h>
#include <node_api.h>

static napi_value call_flock(napi_env env, napi_callback_info info)
{
	size_t argc = 2;
	napi_value argv[2];
	int32_t fd = -1, op = 0;
	napi_value result;

	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 2 ||
	    napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
	    napi_get_value_int32(env, argv[1], &op) != napi_ok) {
		napi_throw_type_error(env, NULL, "flock(fd, operation): two integers expected");
		return NULL;
	}
	int rc;
	do {
		rc = flock(fd, op);
	} while (rc == -1 && errno == EINTR);
	napi_create_int32(env, rc == 0 ? 0 : errno, &result);
	return result;
}

static void set_int(napi_env env, napi_value obj, const char *name, int32_t v)
{
	napi_value n;
	napi_create_int32(env, v, &n);
	napi_set_named_property(env, obj, name, n);
}

NAPI_MODULE_INIT()
{
	napi_value fn;
	napi_create_function(env, "flock", NAPI_AUTO_LENGTH, call_flock, NULL, &fn);
	napi_set_named_property(env, exports, "flock", fn);
	set_int(env, exports, "LOCK_EX", LOCK_EX);
	set_int(env, exports, "LOCK_UN", LOCK_UN);
	set_int(env, exports, "LOCK_NB", LOCK_NB);
	set_int(env, exports, "EWOULDBLOCK", EWOULDBLOCK);
	return exports;
}
