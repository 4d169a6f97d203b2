package attach

import (
	"bufio"
	"encoding/json"
	"net"
	"testing"
	"time"
)

// The control protocol as the README documents it, spoken by hand: one
// JSON line each way; versions other than 1 get EPROTO, malformed requests
// and unknown ops EINVAL, requests for units not attached ENXIO, and
// unknown fields are ignored.
func TestControlProtocolByHand(t *testing.T) {
	c := startDaemon(t)
	ask := func(line string) map[string]any {
		t.Helper()
		conn, err := net.Dial("unix", c.SocketPath())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := conn.Write([]byte(line + "\n")); err != nil {
			t.Fatal(err)
		}
		b, err := bufio.NewReader(conn).ReadBytes('\n')
		if err != nil {
			t.Fatalf("%s: no reply: %v", line, err)
		}
		var resp map[string]any
		if err := json.Unmarshal(b, &resp); err != nil {
			t.Fatalf("%s: reply %q: %v", line, b, err)
		}
		if resp["version"] != 1.0 {
			t.Fatalf("%s: reply version %v", line, resp["version"])
		}
		return resp
	}
	for _, tc := range []struct{ req, errno string }{
		{`{"version":1,"op":"ping"}`, ""},
		{`{"version":1,"op":"ping","future-field":{"x":1}}`, ""},
		{`{"version":2,"op":"ping"}`, "EPROTO"},
		{`{"op":"ping"}`, "EPROTO"},
		{`{"version":1,"op":"frobnicate"}`, "EINVAL"},
		{`{"version":1,"op":`, "EINVAL"},
		{`not json`, "EINVAL"},
		{`{"version":1,"op":"detach","unit":"vd9"}`, "ENXIO"},
		{`{"version":1,"op":"stat","unit":"vd9"}`, "ENXIO"},
	} {
		resp := ask(tc.req)
		if tc.errno == "" {
			if resp["ok"] != true {
				t.Errorf("%s: %v", tc.req, resp)
			}
			continue
		}
		if resp["ok"] == true || resp["errno"] != tc.errno || resp["error"] == "" {
			t.Errorf("%s: got %v, want errno %s", tc.req, resp, tc.errno)
		}
	}
	resp := ask(`{"version":1,"op":"list"}`)
	if resp["ok"] != true {
		t.Fatalf("list: %v", resp)
	}
	// No units: the field is left out (omitempty), which clients read as
	// an empty list.
	if units, ok := resp["units"]; ok && len(units.([]any)) != 0 {
		t.Errorf("list of no units: %v", units)
	}
}
