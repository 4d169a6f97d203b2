package nbd

import (
	"io"
	"net"
	"testing"
	"time"

	"vdisk/format/mem"
	"vdisk/nbd"
)

// fuzzServe runs one server connection over a pipe fed with input, and
// checks that it ends (input exhausted means EOF) without panicking.
func fuzzServe(t *testing.T, input []byte) {
	srv := &Server{Exports: []*Export{{Name: "", Image: mem.New(1 << 20)}, {Name: "ro", Image: readOnly{mem.New(1 << 16)}}},
		HandshakeTimeout: 2 * time.Second}
	server, client := net.Pipe()
	done := make(chan struct{})
	go func() { srv.ServeConn(server); close(done) }()
	go io.Copy(io.Discard, client)
	client.SetWriteDeadline(time.Now().Add(2 * time.Second))
	client.Write(input)
	client.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("server connection did not end")
	}
	srv.Shutdown()
}

func goPrefix(structured bool) []byte {
	b := []byte{0, 0, 0, 3}
	if structured {
		b = nbd.AppendOpt(b, nbd.OptStructuredReply, nil)
		b = nbd.AppendOpt(b, nbd.OptSetMetaContext, nbd.AppendMetaRequest(nil, nbd.MetaRequest{Queries: []string{nbd.MetaBaseAllocation}}))
	}
	return nbd.AppendOpt(b, nbd.OptGo, nbd.AppendInfoRequest(nil, nbd.InfoRequest{}))
}

// FuzzHandshake: arbitrary client bytes from the first one.
func FuzzHandshake(f *testing.F) {
	f.Add(goPrefix(true))
	f.Add(nbd.AppendOpt([]byte{0, 0, 0, 1}, nbd.OptList, nil))
	f.Add(nbd.AppendOpt([]byte{0, 0, 0, 3}, nbd.OptListMetaContext, []byte{0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5, 'b', 'a', 's', 'e', ':'}))
	f.Add(nbd.AppendOpt([]byte{0, 0, 0, 1}, nbd.OptExportName, []byte("ro")))
	f.Fuzz(func(t *testing.T, b []byte) { fuzzServe(t, b) })
}

// FuzzRequests: a valid handshake, then arbitrary transmission bytes.
func FuzzRequests(f *testing.F) {
	f.Add(true, nbd.AppendRequest(nil, nbd.Request{Type: nbd.CmdRead, Length: 4096}))
	f.Add(false, append(nbd.AppendRequest(nil, nbd.Request{Type: nbd.CmdWrite, Offset: 10, Length: 4}), 1, 2, 3, 4))
	f.Add(true, nbd.AppendRequest(nil, nbd.Request{Type: nbd.CmdBlockStatus, Flags: nbd.CmdFlagReqOne, Length: 1 << 20}))
	f.Add(true, nbd.AppendRequest(nil, nbd.Request{Type: nbd.CmdWriteZeroes, Flags: nbd.CmdFlagFastZero, Offset: 4096, Length: 8192}))
	f.Add(false, nbd.AppendRequest(nil, nbd.Request{Type: nbd.CmdDisc}))
	f.Fuzz(func(t *testing.T, structured bool, b []byte) {
		fuzzServe(t, append(goPrefix(structured), b...))
	})
}
