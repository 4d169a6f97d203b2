package nbd

import (
	"bytes"
	"testing"
)

// FuzzParse feeds arbitrary bytes to every decoder: none may panic, and
// what decodes must encode back to the same bytes.
func FuzzParse(f *testing.F) {
	f.Add(AppendRequest(nil, Request{Type: CmdRead, Cookie: 1, Offset: 512, Length: 4096}))
	f.Add(AppendInfoRequest(nil, InfoRequest{Name: "disk", Infos: []uint16{InfoBlockSize}}))
	f.Add(AppendMetaRequest(nil, MetaRequest{Export: "", Queries: []string{MetaBaseAllocation}}))
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := ParseRequest(b); err == nil && !bytes.Equal(AppendRequest(nil, r), b[:RequestSize]) {
			t.Fatal("request round trip")
		}
		if r, err := ParseInfoRequest(b); err == nil && !bytes.Equal(AppendInfoRequest(nil, r), b) {
			t.Fatal("info request round trip")
		}
		if r, err := ParseMetaRequest(b); err == nil && !bytes.Equal(AppendMetaRequest(nil, r), b) {
			t.Fatal("meta request round trip")
		}
		if _, ds, err := ParseBlockStatus(b); err == nil && 4+8*len(ds) != len(b) {
			t.Fatal("block status length")
		}
		ParseErrorChunk(b)
		ParseReply(b)
		ParseOptHeader(b)
		ParseOptReplyHeader(b)
	})
}
