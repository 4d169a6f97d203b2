//go:build !linux

package imgtool

type writeback struct{}

func newWriteback(string) *writeback { return nil }
func (*writeback) start()            {}
func (*writeback) close()            {}
