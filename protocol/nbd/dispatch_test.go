package nbd

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"vdisk/nbd"
)

// TestOneBlockStatusChunkPerContext: the spec allows one block status
// chunk per context in a reply; a server that sends more (without the
// done flag, for ever) is refused at the second instead of making the
// client keep every descriptor.
func TestOneBlockStatusChunkPerContext(t *testing.T) {
	c := &Client{metaID: 7, pending: map[uint64]*call{}}
	cl := &call{req: nbd.Request{Type: nbd.CmdBlockStatus, Cookie: 1, Length: 4096}, done: make(chan struct{})}
	c.pending[1] = cl
	chunk := binary.BigEndian.AppendUint32(nil, 7)
	chunk = binary.BigEndian.AppendUint32(chunk, 4096)
	chunk = binary.BigEndian.AppendUint32(chunk, nbd.StateHole)
	h := nbd.ReplyHeader{Structured: true, Type: nbd.ReplyTypeBlockStatus, Cookie: 1, Length: uint32(len(chunk))}
	if err := c.dispatch(bytes.NewReader(chunk), h); err != nil {
		t.Fatalf("first chunk: %v", err)
	}
	if len(cl.descs) != 1 {
		t.Fatalf("%d descriptors kept, want 1", len(cl.descs))
	}
	err := c.dispatch(bytes.NewReader(chunk), h)
	if err == nil || !strings.Contains(err.Error(), "second block status chunk") {
		t.Fatalf("second chunk for the same context: %v", err)
	}
	if len(cl.descs) != 1 {
		t.Fatalf("%d descriptors kept after the refused chunk", len(cl.descs))
	}
}
