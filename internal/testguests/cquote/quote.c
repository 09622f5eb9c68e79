/*
 * quote.c: a pricing stand-in in freestanding C for tests and benchmarks
 * that move versions around (package fleet, bench/fleet) and need no Go
 * SDK: it compiles in milliseconds and loads in a few, where a Go guest
 * takes most of a second to compile. Its one handler, "quote", answers
 * {"version":"<VERSION>","quotes":0} whatever the request, so a caller
 * sees which version served it.
 *
 *   -DVERSION='"v1"'  the version it names (default "v1")
 *   -DTRAPINIT        _initialize traps: the host refuses it at its init
 *                     check, on every instance (a bad artifact)
 *   -DFAILQUOTE       every quote fails (it passes the host's checks, and a
 *                     canary of it aborts)
 */
#include "hotswap.h"

#ifndef VERSION
#define VERSION "v1"
#endif

static const char handlers[] = "quote";
static const char answer[] = "{\"version\":\"" VERSION "\",\"quotes\":0}";

static uint8_t initial[16 << 10];
static uint8_t *exchange = initial;
static uint32_t exchange_cap = sizeof initial;

HOTSWAP_EXPORT("_initialize") void _initialize(void) {
#ifdef TRAPINIT
	__builtin_trap();
#endif
}

HOTSWAP_EXPORT("hotswap_abi_version") uint32_t hotswap_abi_version(void) { return HOTSWAP_ABI_VERSION; }

HOTSWAP_EXPORT("hotswap_handlers") uint64_t hotswap_handlers(void) {
	return hotswap_pack(handlers, sizeof handlers - 1, HOTSWAP_STATUS_OK);
}

HOTSWAP_EXPORT("hotswap_exchange") uint32_t hotswap_exchange(uint32_t size) {
	if (size > exchange_cap) {
		uint32_t pages = (size + 0xffff) >> 16;
		int32_t old = __builtin_wasm_memory_grow(0, pages);
		if (old < 0)
			__builtin_trap();
		exchange = (uint8_t *)((uintptr_t)old << 16);
		exchange_cap = pages << 16;
	}
	return (uint32_t)(uintptr_t)exchange;
}

static const char unknown[] = "unknown handler";
#ifdef FAILQUOTE
static const char failed[] = "quote failed (built with FAILQUOTE)";
#endif

HOTSWAP_EXPORT("hotswap_call") uint64_t hotswap_call(uint32_t id, uint32_t n) {
	(void)n;
	if (id != 0)
		return hotswap_pack(unknown, sizeof unknown - 1, HOTSWAP_STATUS_ERROR);
#ifdef FAILQUOTE
	return hotswap_pack(failed, sizeof failed - 1, HOTSWAP_STATUS_ERROR);
#endif
	return hotswap_pack(answer, sizeof answer - 1, HOTSWAP_STATUS_OK);
}

HOTSWAP_EXPORT("hotswap_selftest") uint64_t hotswap_selftest(void) { return hotswap_pack(0, 0, HOTSWAP_STATUS_OK); }

HOTSWAP_EXPORT("hotswap_migrate") uint64_t hotswap_migrate(uint32_t n) {
	(void)n;
	return hotswap_pack(0, 0, HOTSWAP_STATUS_OK);
}

HOTSWAP_EXPORT("hotswap_yield") uint64_t hotswap_yield(uint32_t full) {
	(void)full;
	return 0;
}
