// Package nbd holds the Network Block Device protocol's constants and wire
// encoding, shared by the server (export/nbd) and the client
// (protocol/nbd). Everything here is pure: it parses and builds byte
// slices and never trusts a length it has not checked, so it can be fuzzed
// on its own.
//
// The protocol is described in NetworkBlockDevice/nbd doc/proto.md; only
// the fixed newstyle handshake is implemented.
package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Handshake magics.
const (
	Magic         uint64 = 0x4e42444d41474943 // "NBDMAGIC"
	OptMagic      uint64 = 0x49484156454F5054 // "IHAVEOPT"
	OptReplyMagic uint64 = 0x3e889045565a9
)

// Handshake flags (server) and client flags.
const (
	FlagFixedNewstyle uint16 = 1 << 0
	FlagNoZeroes      uint16 = 1 << 1

	ClientFlagFixedNewstyle uint32 = 1 << 0
	ClientFlagNoZeroes      uint32 = 1 << 1
)

// Options.
const (
	OptExportName      uint32 = 1
	OptAbort           uint32 = 2
	OptList            uint32 = 3
	OptPeekExport      uint32 = 4
	OptStartTLS        uint32 = 5
	OptInfo            uint32 = 6
	OptGo              uint32 = 7
	OptStructuredReply uint32 = 8
	OptListMetaContext uint32 = 9
	OptSetMetaContext  uint32 = 10
	OptExtendedHeaders uint32 = 11
)

// Option reply types.
const (
	RepAck         uint32 = 1
	RepServer      uint32 = 2
	RepInfo        uint32 = 3
	RepMetaContext uint32 = 4

	repErr              uint32 = 1 << 31
	RepErrUnsup         uint32 = repErr | 1
	RepErrPolicy        uint32 = repErr | 2
	RepErrInvalid       uint32 = repErr | 3
	RepErrPlatform      uint32 = repErr | 4
	RepErrTLSReqd       uint32 = repErr | 5
	RepErrUnknown       uint32 = repErr | 6
	RepErrShutdown      uint32 = repErr | 7
	RepErrBlockSizeReqd uint32 = repErr | 8
	RepErrTooBig        uint32 = repErr | 9
	RepErrExtHeaderReqd uint32 = repErr | 10
)

// IsRepErr reports whether an option reply type is an error.
func IsRepErr(t uint32) bool { return t&repErr != 0 }

// NBD_OPT_INFO / NBD_OPT_GO information types.
const (
	InfoExport      uint16 = 0
	InfoName        uint16 = 1
	InfoDescription uint16 = 2
	InfoBlockSize   uint16 = 3
)

// Transmission flags.
const (
	FlagHasFlags        uint16 = 1 << 0
	FlagReadOnly        uint16 = 1 << 1
	FlagSendFlush       uint16 = 1 << 2
	FlagSendFUA         uint16 = 1 << 3
	FlagRotational      uint16 = 1 << 4
	FlagSendTrim        uint16 = 1 << 5
	FlagSendWriteZeroes uint16 = 1 << 6
	FlagSendDF          uint16 = 1 << 7
	FlagCanMultiConn    uint16 = 1 << 8
	FlagSendResize      uint16 = 1 << 9
	FlagSendCache       uint16 = 1 << 10
	FlagSendFastZero    uint16 = 1 << 11
)

// Transmission magics.
const (
	RequestMagic         uint32 = 0x25609513
	SimpleReplyMagic     uint32 = 0x67446698
	StructuredReplyMagic uint32 = 0x668e33ef
)

// Commands.
const (
	CmdRead        uint16 = 0
	CmdWrite       uint16 = 1
	CmdDisc        uint16 = 2
	CmdFlush       uint16 = 3
	CmdTrim        uint16 = 4
	CmdCache       uint16 = 5
	CmdWriteZeroes uint16 = 6
	CmdBlockStatus uint16 = 7
)

// Command flags.
const (
	CmdFlagFUA      uint16 = 1 << 0
	CmdFlagNoHole   uint16 = 1 << 1
	CmdFlagDF       uint16 = 1 << 2
	CmdFlagReqOne   uint16 = 1 << 3
	CmdFlagFastZero uint16 = 1 << 4
)

// Structured reply flags and chunk types.
const (
	ReplyFlagDone uint16 = 1 << 0

	ReplyTypeNone        uint16 = 0
	ReplyTypeOffsetData  uint16 = 1
	ReplyTypeOffsetHole  uint16 = 2
	ReplyTypeBlockStatus uint16 = 5
	ReplyTypeError       uint16 = 1<<15 | 1
	ReplyTypeErrorOffset uint16 = 1<<15 | 2
)

// IsReplyError reports whether a chunk type is an error chunk.
func IsReplyError(t uint16) bool { return t&(1<<15) != 0 }

// Error values (errno numbers as the spec fixes them).
const (
	EPERM     uint32 = 1
	EIO       uint32 = 5
	ENOMEM    uint32 = 12
	EINVAL    uint32 = 22
	ENOSPC    uint32 = 28
	EOVERFLOW uint32 = 75
	ENOTSUP   uint32 = 95
	ESHUTDOWN uint32 = 108
)

// base:allocation states.
const (
	StateHole uint32 = 1 << 0
	StateZero uint32 = 1 << 1
)

// MetaBaseAllocation is the one metadata context vdisk knows.
const MetaBaseAllocation = "base:allocation"

// Limits.
const (
	// DefaultPort is the IANA port of NBD.
	DefaultPort = 10809
	// MaxPayload bounds a READ or WRITE, as qemu-nbd's NBD_MAX_BUFFER_SIZE.
	MaxPayload = 32 << 20
	// MaxOptionLength bounds an option's data during the handshake; no
	// legitimate option is anywhere near it.
	MaxOptionLength = 64 << 10
	// MaxString is the spec's bound on names and descriptions.
	MaxString = 4096
	// PreferredBlockSize is advertised in NBD_INFO_BLOCK_SIZE.
	PreferredBlockSize = 4096
)

// Sizes of the fixed headers.
const (
	RequestSize         = 28
	SimpleReplySize     = 16
	StructuredReplySize = 20
	OptHeaderSize       = 16 // IHAVEOPT, option, length
	OptReplyHeaderSize  = 20 // magic, option, type, length
)

var be = binary.BigEndian

// Request is a transmission-phase request header.
type Request struct {
	Flags  uint16
	Type   uint16
	Cookie uint64
	Offset uint64
	Length uint32
}

// ErrBadMagic marks a header whose magic is wrong: the stream cannot be
// trusted any more and the connection must close.
var ErrBadMagic = errors.New("nbd: bad magic")

// ParseRequest decodes a request header from exactly RequestSize bytes.
func ParseRequest(b []byte) (Request, error) {
	if len(b) < RequestSize {
		return Request{}, fmt.Errorf("nbd: short request header (%d bytes)", len(b))
	}
	if m := be.Uint32(b); m != RequestMagic {
		return Request{}, fmt.Errorf("%w: request magic %#x", ErrBadMagic, m)
	}
	return Request{
		Flags:  be.Uint16(b[4:]),
		Type:   be.Uint16(b[6:]),
		Cookie: be.Uint64(b[8:]),
		Offset: be.Uint64(b[16:]),
		Length: be.Uint32(b[24:]),
	}, nil
}

// AppendRequest encodes a request header.
func AppendRequest(b []byte, r Request) []byte {
	b = be.AppendUint32(b, RequestMagic)
	b = be.AppendUint16(b, r.Flags)
	b = be.AppendUint16(b, r.Type)
	b = be.AppendUint64(b, r.Cookie)
	b = be.AppendUint64(b, r.Offset)
	return be.AppendUint32(b, r.Length)
}

// AppendSimpleReply encodes a simple reply header.
func AppendSimpleReply(b []byte, errno uint32, cookie uint64) []byte {
	b = be.AppendUint32(b, SimpleReplyMagic)
	b = be.AppendUint32(b, errno)
	return be.AppendUint64(b, cookie)
}

// AppendChunk encodes a structured reply chunk header.
func AppendChunk(b []byte, flags, typ uint16, cookie uint64, length uint32) []byte {
	b = be.AppendUint32(b, StructuredReplyMagic)
	b = be.AppendUint16(b, flags)
	b = be.AppendUint16(b, typ)
	b = be.AppendUint64(b, cookie)
	return be.AppendUint32(b, length)
}

// ReplyHeader is a decoded simple reply or structured chunk header. For a
// simple reply Structured is false, Error holds the error and Length is 0.
type ReplyHeader struct {
	Structured bool
	Error      uint32
	Flags      uint16
	Type       uint16
	Cookie     uint64
	Length     uint32
}

// ParseReplyMagic returns the magic at the start of a reply and how many
// header bytes the reply has in total.
func ParseReplyMagic(b []byte) (size int, err error) {
	if len(b) < 4 {
		return 0, errors.New("nbd: short reply header")
	}
	switch m := be.Uint32(b); m {
	case SimpleReplyMagic:
		return SimpleReplySize, nil
	case StructuredReplyMagic:
		return StructuredReplySize, nil
	default:
		return 0, fmt.Errorf("%w: reply magic %#x", ErrBadMagic, m)
	}
}

// ParseReply decodes a whole reply header (simple or structured).
func ParseReply(b []byte) (ReplyHeader, error) {
	size, err := ParseReplyMagic(b)
	if err != nil {
		return ReplyHeader{}, err
	}
	if len(b) < size {
		return ReplyHeader{}, errors.New("nbd: short reply header")
	}
	if size == SimpleReplySize {
		return ReplyHeader{Error: be.Uint32(b[4:]), Cookie: be.Uint64(b[8:])}, nil
	}
	return ReplyHeader{
		Structured: true,
		Flags:      be.Uint16(b[4:]),
		Type:       be.Uint16(b[6:]),
		Cookie:     be.Uint64(b[8:]),
		Length:     be.Uint32(b[16:]),
	}, nil
}

// OptHeader is a client's option header.
type OptHeader struct {
	Option uint32
	Length uint32
}

// ParseOptHeader decodes an option header from OptHeaderSize bytes.
func ParseOptHeader(b []byte) (OptHeader, error) {
	if len(b) < OptHeaderSize {
		return OptHeader{}, errors.New("nbd: short option header")
	}
	if m := be.Uint64(b); m != OptMagic {
		return OptHeader{}, fmt.Errorf("%w: option magic %#x", ErrBadMagic, m)
	}
	return OptHeader{Option: be.Uint32(b[8:]), Length: be.Uint32(b[12:])}, nil
}

// AppendOpt encodes an option with its data.
func AppendOpt(b []byte, opt uint32, data []byte) []byte {
	b = be.AppendUint64(b, OptMagic)
	b = be.AppendUint32(b, opt)
	b = be.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// AppendOptReply encodes an option reply with its data.
func AppendOptReply(b []byte, opt, typ uint32, data []byte) []byte {
	b = be.AppendUint64(b, OptReplyMagic)
	b = be.AppendUint32(b, opt)
	b = be.AppendUint32(b, typ)
	b = be.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// OptReplyHeader is a server's option reply header.
type OptReplyHeader struct {
	Option uint32
	Type   uint32
	Length uint32
}

// ParseOptReplyHeader decodes an option reply header.
func ParseOptReplyHeader(b []byte) (OptReplyHeader, error) {
	if len(b) < OptReplyHeaderSize {
		return OptReplyHeader{}, errors.New("nbd: short option reply header")
	}
	if m := be.Uint64(b); m != OptReplyMagic {
		return OptReplyHeader{}, fmt.Errorf("%w: option reply magic %#x", ErrBadMagic, m)
	}
	return OptReplyHeader{Option: be.Uint32(b[8:]), Type: be.Uint32(b[12:]), Length: be.Uint32(b[16:])}, nil
}

// InfoRequest is the data of NBD_OPT_INFO and NBD_OPT_GO.
type InfoRequest struct {
	Name  string
	Infos []uint16
}

// ErrMalformed marks option or request data that does not parse.
var ErrMalformed = errors.New("nbd: malformed data")

// reader is a bounds-checked cursor over untrusted data.
type reader struct {
	b   []byte
	err bool
}

func (r *reader) u16() uint16 {
	if len(r.b) < 2 {
		r.err = true
		return 0
	}
	v := be.Uint16(r.b)
	r.b = r.b[2:]
	return v
}

func (r *reader) u32() uint32 {
	if len(r.b) < 4 {
		r.err = true
		return 0
	}
	v := be.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

func (r *reader) bytes(n uint32) []byte {
	if uint64(len(r.b)) < uint64(n) {
		r.err = true
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

// ParseInfoRequest decodes NBD_OPT_INFO / NBD_OPT_GO data.
func ParseInfoRequest(b []byte) (InfoRequest, error) {
	r := reader{b: b}
	nameLen := r.u32()
	if nameLen > MaxString {
		return InfoRequest{}, fmt.Errorf("%w: export name of %d bytes", ErrMalformed, nameLen)
	}
	name := r.bytes(nameLen)
	count := r.u16()
	if r.err || uint64(len(r.b)) != 2*uint64(count) {
		return InfoRequest{}, fmt.Errorf("%w: info request", ErrMalformed)
	}
	req := InfoRequest{Name: string(name), Infos: make([]uint16, count)}
	for i := range req.Infos {
		req.Infos[i] = r.u16()
	}
	return req, nil
}

// AppendInfoRequest encodes NBD_OPT_INFO / NBD_OPT_GO data.
func AppendInfoRequest(b []byte, req InfoRequest) []byte {
	b = be.AppendUint32(b, uint32(len(req.Name)))
	b = append(b, req.Name...)
	b = be.AppendUint16(b, uint16(len(req.Infos)))
	for _, i := range req.Infos {
		b = be.AppendUint16(b, i)
	}
	return b
}

// MetaRequest is the data of NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT.
type MetaRequest struct {
	Export  string
	Queries []string
}

// ParseMetaRequest decodes meta context option data.
func ParseMetaRequest(b []byte) (MetaRequest, error) {
	r := reader{b: b}
	nameLen := r.u32()
	if nameLen > MaxString {
		return MetaRequest{}, fmt.Errorf("%w: export name of %d bytes", ErrMalformed, nameLen)
	}
	name := r.bytes(nameLen)
	count := r.u32()
	if r.err {
		return MetaRequest{}, fmt.Errorf("%w: meta context request", ErrMalformed)
	}
	// Each query takes at least 4 bytes, so the count is bounded by the
	// data actually sent rather than by what the client claims.
	if uint64(count)*4 > uint64(len(r.b)) {
		return MetaRequest{}, fmt.Errorf("%w: %d queries in %d bytes", ErrMalformed, count, len(r.b))
	}
	req := MetaRequest{Export: string(name), Queries: make([]string, 0, count)}
	for range count {
		l := r.u32()
		if l > MaxString {
			return MetaRequest{}, fmt.Errorf("%w: query of %d bytes", ErrMalformed, l)
		}
		q := r.bytes(l)
		if r.err {
			return MetaRequest{}, fmt.Errorf("%w: meta context query", ErrMalformed)
		}
		req.Queries = append(req.Queries, string(q))
	}
	if len(r.b) != 0 {
		return MetaRequest{}, fmt.Errorf("%w: %d trailing bytes in meta context request", ErrMalformed, len(r.b))
	}
	return req, nil
}

// AppendMetaRequest encodes meta context option data.
func AppendMetaRequest(b []byte, req MetaRequest) []byte {
	b = be.AppendUint32(b, uint32(len(req.Export)))
	b = append(b, req.Export...)
	b = be.AppendUint32(b, uint32(len(req.Queries)))
	for _, q := range req.Queries {
		b = be.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// AppendInfoExport encodes an NBD_INFO_EXPORT reply payload.
func AppendInfoExport(b []byte, size uint64, flags uint16) []byte {
	b = be.AppendUint16(b, InfoExport)
	b = be.AppendUint64(b, size)
	return be.AppendUint16(b, flags)
}

// AppendInfoString encodes NBD_INFO_NAME or NBD_INFO_DESCRIPTION.
func AppendInfoString(b []byte, typ uint16, s string) []byte {
	b = be.AppendUint16(b, typ)
	return append(b, s...)
}

// AppendInfoBlockSize encodes NBD_INFO_BLOCK_SIZE.
func AppendInfoBlockSize(b []byte, minimum, preferred, maximum uint32) []byte {
	b = be.AppendUint16(b, InfoBlockSize)
	b = be.AppendUint32(b, minimum)
	b = be.AppendUint32(b, preferred)
	return be.AppendUint32(b, maximum)
}

// Descriptor is one extent of a block status reply.
type Descriptor struct {
	Length uint32
	Flags  uint32
}

// ParseBlockStatus decodes a NBD_REPLY_TYPE_BLOCK_STATUS payload.
func ParseBlockStatus(b []byte) (id uint32, ds []Descriptor, err error) {
	if len(b) < 12 || (len(b)-4)%8 != 0 {
		return 0, nil, fmt.Errorf("%w: block status chunk of %d bytes", ErrMalformed, len(b))
	}
	id = be.Uint32(b)
	b = b[4:]
	ds = make([]Descriptor, len(b)/8)
	for i := range ds {
		ds[i] = Descriptor{Length: be.Uint32(b[8*i:]), Flags: be.Uint32(b[8*i+4:])}
	}
	return id, ds, nil
}

// ParseErrorChunk decodes an error chunk's payload into the error number and message.
func ParseErrorChunk(b []byte) (errno uint32, msg string, err error) {
	r := reader{b: b}
	errno = r.u32()
	l := r.u16()
	m := r.bytes(uint32(l))
	if r.err {
		return 0, "", fmt.Errorf("%w: error chunk", ErrMalformed)
	}
	return errno, string(m), nil
}

// ErrnoString names an NBD error value for messages.
func ErrnoString(e uint32) string {
	switch e {
	case 0:
		return "success"
	case EPERM:
		return "operation not permitted"
	case EIO:
		return "input/output error"
	case ENOMEM:
		return "cannot allocate memory"
	case EINVAL:
		return "invalid argument"
	case ENOSPC:
		return "no space left on device"
	case EOVERFLOW:
		return "value too large"
	case ENOTSUP:
		return "operation not supported"
	case ESHUTDOWN:
		return "server is shutting down"
	}
	return fmt.Sprintf("error %d", e)
}

// CmdName names a command for messages.
func CmdName(t uint16) string {
	switch t {
	case CmdRead:
		return "READ"
	case CmdWrite:
		return "WRITE"
	case CmdDisc:
		return "DISC"
	case CmdFlush:
		return "FLUSH"
	case CmdTrim:
		return "TRIM"
	case CmdCache:
		return "CACHE"
	case CmdWriteZeroes:
		return "WRITE_ZEROES"
	case CmdBlockStatus:
		return "BLOCK_STATUS"
	}
	return fmt.Sprintf("command %d", t)
}
