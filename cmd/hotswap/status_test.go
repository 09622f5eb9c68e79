package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/control"
)

// statusSchema pins the fields of `hotswap status -o json`, per object, as
// "name type". Fields may be added (and documented in docs/cli.md); none
// may change or go.
var statusSchema = map[string][]string{
	"Status": {"ok bool", "error Error", "process ProcessStatus", "trust_mode string", "dev_trust_dir string", "modules []ModuleStatus",
		"state StateStatus", "plugins Retained"},
	"Retained": {"versions []RetainedVersion", "max int", "mapped_bytes int"},
	"RetainedVersion": {"module string", "version string", "digest string", "mapped_bytes int", "in_use bool",
		"loaded_at time", "failed string"},
	"StateStatus": {"durability string", "commit_window_ms int", "path string", "taking_over bool", "commits int",
		"failures int", "last_error string"},
	"Error": {"kind string", "check string", "message string", "stderr string", "serving string"},
	"ProcessStatus": {"pid int", "generation int", "parent_pid int", "started_at time",
		"upgrade UpgradeStatus", "taking_over bool", "binary BinaryStatus"},
	"BinaryStatus":   {"digest string", "version string", "error string"},
	"UpgradeStatus":  {"state string", "phase string", "phase_pid int", "last UpgradeAttempt"},
	"UpgradeAttempt": {"outcome string", "pid int", "binary string", "trigger string", "started_at time", "ready_ms int", "error string"},
	"ModuleStatus": {"name string", "active VersionStatus", "previous VersionStatus", "draining []VersionStatus",
		"state_keys int", "canary CanaryStatus"},
	"CanaryStatus": {"id string", "version VersionStatus", "stable string", "stable_digest string", "artifact string",
		"state string", "step int", "steps []float64", "weight float64", "interval_ms int", "min_calls int", "started_at time",
		"step_started_at time", "ended_at time", "empty_windows int", "check_failures int", "window CanaryWindow",
		"last_verdict CanaryVerdict"},
	"CanaryWindow":   {"start time", "end time", "stable CanaryNumbers", "canary CanaryNumbers", "evidence CanaryEvidence"},
	"CanaryNumbers":  {"calls int", "failures int", "failure_rate float64", "timed int", "p50_ns int", "p99_ns int"},
	"CanaryEvidence": {"failures float64", "p50 float64", "p99 float64", "bound float64"},
	"CanaryVerdict": {"seq int", "time time", "decision string", "step int", "weight float64", "reason string", "by string",
		"window CanaryWindow", "text string"},
	"VersionStatus": {"version string", "digest string", "loaded_at time", "in_flight int", "instances int",
		"idle_instances int", "memory_bytes int", "calls int", "failures int", "discarded_instances int"},
}

// schemaOf lists the JSON fields of every object type reachable from t.
func schemaOf(t reflect.Type, out map[string][]string) {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || t == reflect.TypeFor[time.Time]() || out[t.Name()] != nil {
		return
	}
	obj := t.Name()
	out[obj] = []string{}
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for f := range t.Fields() {
			if f.Anonymous {
				walk(f.Type) // encoding/json flattens embedded structs
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "-" || !f.IsExported() {
				continue
			}
			out[obj] = append(out[obj], name+" "+typeName(f.Type))
			schemaOf(f.Type, out)
		}
	}
	walk(t)
}

func typeName(t reflect.Type) string {
	switch {
	case t == reflect.TypeFor[time.Time]():
		return "time"
	case t.Kind() == reflect.Pointer:
		return typeName(t.Elem())
	case t.Kind() == reflect.Slice:
		return "[]" + typeName(t.Elem())
	case t.Kind() == reflect.Struct:
		return t.Name()
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		return "int"
	}
	return t.Kind().String()
}

func TestStatusJSONSchema(t *testing.T) {
	got := map[string][]string{}
	schemaOf(reflect.TypeFor[control.Status](), got)
	for typ, want := range statusSchema {
		if !slices.Equal(got[typ], want) {
			t.Errorf("status JSON %s fields = %q; want %q (the documented, stable set)", typ, got[typ], want)
		}
	}
	for typ := range got {
		if statusSchema[typ] == nil {
			t.Errorf("status JSON has an undocumented object %s: %q", typ, got[typ])
		}
	}

	doc, err := os.ReadFile("../../docs/cli.md")
	if err != nil {
		t.Fatal(err)
	}
	for typ, fields := range statusSchema {
		for _, f := range fields {
			name, _, _ := strings.Cut(f, " ")
			if !strings.Contains(string(doc), fmt.Sprintf("`%s`", name)) {
				t.Errorf("docs/cli.md does not document %s.%s", typ, name)
			}
		}
	}
}

func TestStatus(t *testing.T) {
	s := newService(t, serviceOptions{})
	out := mustCtl(t, s.socket, "status", "-o", "json")
	var empty map[string]any
	if err := json.Unmarshal([]byte(out), &empty); err != nil {
		t.Fatalf("hotswap status -o json = %q: %v", out, err)
	}
	if m, ok := empty["modules"].([]any); !ok || len(m) != 0 {
		t.Errorf("status modules = %v; want an empty list, not null", empty["modules"])
	}

	mustCtl(t, s.socket, "load", "pricing", s.artifact(t, guestV1, "pricing-v1.wasm", "v1"))
	out = mustCtl(t, s.socket, "status", "-o", "json")
	var raw map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("hotswap status -o json = %q: %v", out, err)
	}
	var keys []string
	for k := range raw {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if want := []string{"modules", "ok", "process", "state", "trust_mode"}; !slices.Equal(keys, want) {
		t.Errorf("status JSON keys = %q; want %q", keys, want)
	}
	var st control.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	if !st.OK || st.Process.PID != os.Getpid() || st.Process.Generation != 1 || st.TrustMode != "enforce" ||
		len(st.Modules) != 1 || st.Modules[0].Name != "pricing" || st.Modules[0].Active == nil ||
		st.Modules[0].Active.Version != "v1" || st.Modules[0].Active.Instances == 0 || st.Modules[0].Active.MemoryBytes == 0 {
		t.Errorf("hotswap status -o json = %s; want ok, this pid, generation 1, enforce, pricing@v1 with instances and memory", out)
	}

	table := mustCtl(t, s.socket, "status")
	if st.State.Durability != "window" || st.State.Path != filepath.Join(s.f.State, "state.db") || st.State.CommitWindowMS <= 0 {
		t.Errorf("status state = %+v; want window durability in the state directory's state.db", st.State)
	}
	for _, want := range []string{fmt.Sprintf("process  pid %d, generation 1, up since ", os.Getpid()), "upgrade  disabled",
		"trust    enforce", "state    window ", "MODULE"} {
		if !strings.Contains(table, want) {
			t.Errorf("hotswap status = %q; want it to contain %q", table, want)
		}
	}
	lines := strings.Split(strings.TrimSpace(table), "\n")
	row := strings.Fields(lines[len(lines)-1])
	if want := []string{"pricing", "v1", st.Modules[0].Active.Digest[:12], "0"}; len(row) < 4 || !slices.Equal(row[:4], want) {
		t.Errorf("hotswap status module row = %q; want it to start %q", row, want)
	}

	// The default socket is $HOTSWAP_SOCKET.
	t.Setenv(control.SocketEnv, s.socket)
	var buf strings.Builder
	if err := run(t.Context(), []string{"status"}, &buf, &buf); err != nil || !strings.Contains(buf.String(), st.Modules[0].Active.Digest[:12]) {
		t.Errorf("hotswap status with $%s = %v, %q; want the status", control.SocketEnv, err, buf.String())
	}
}
