/*
 * echo.c: the smallest correct hotswap module. One handler, "echo",
 * answers its input; no capability is needed.
 *
 *   clang --target=wasm32 -O2 -nostdlib -ffreestanding \
 *       -Wl,--no-entry -Wl,--stack-first -o echo.wasm echo.c
 */
#include "hotswap.h"

static const char handlers[] = "echo";

/* The exchange buffer: the host writes each call's input here. A request
 * for more than it holds is served from fresh pages at the end of memory. */
static uint8_t initial[64 << 10];
static uint8_t *exchange = initial;
static uint32_t exchange_cap = sizeof initial;

HOTSWAP_EXPORT("_initialize") void _initialize(void) {}

HOTSWAP_EXPORT("hotswap_abi_version") uint32_t hotswap_abi_version(void) { return HOTSWAP_ABI_VERSION; }

HOTSWAP_EXPORT("hotswap_handlers") uint64_t hotswap_handlers(void) {
	return hotswap_pack(handlers, sizeof handlers - 1, HOTSWAP_STATUS_OK);
}

HOTSWAP_EXPORT("hotswap_exchange") uint32_t hotswap_exchange(uint32_t size) {
	if (size > exchange_cap) {
		uint32_t pages = (size + 0xffff) >> 16;
		int32_t old = __builtin_wasm_memory_grow(0, pages);
		if (old < 0)
			__builtin_trap(); /* the host reports the memory limit */
		exchange = (uint8_t *)((uintptr_t)old << 16);
		exchange_cap = pages << 16;
	}
	return (uint32_t)(uintptr_t)exchange;
}

static const char unknown[] = "unknown handler";

HOTSWAP_EXPORT("hotswap_call") uint64_t hotswap_call(uint32_t id, uint32_t n) {
	if (id != 0)
		return hotswap_pack(unknown, sizeof unknown - 1, HOTSWAP_STATUS_ERROR);
	return hotswap_pack(exchange, n, HOTSWAP_STATUS_OK);
}

HOTSWAP_EXPORT("hotswap_selftest") uint64_t hotswap_selftest(void) { return hotswap_pack(0, 0, HOTSWAP_STATUS_OK); }

HOTSWAP_EXPORT("hotswap_migrate") uint64_t hotswap_migrate(uint32_t n) {
	(void)n;
	return hotswap_pack(0, 0, HOTSWAP_STATUS_OK);
}

HOTSWAP_EXPORT("hotswap_yield") uint64_t hotswap_yield(uint32_t full) {
	(void)full;
	return 0; /* no garbage collector: nothing to do, nothing allocated */
}
