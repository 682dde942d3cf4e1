package main

import (
	"encoding/binary"
	"fmt"
	"syscall"
)

// The kernel's socket-diagnostics interface (linux/inet_diag.h,
// linux/sock_diag.h, linux/tcp.h), which reports the byte counters of every
// TCP connection, whoever owns it: the harness reads the bytes a walsender
// sent without standing between it and its client.
const (
	sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY
	inetDiagInfo     = 2  // INET_DIAG_INFO: the attribute holding struct tcp_info
	tcpEstablished   = 1  // TCP_ESTABLISHED

	inetDiagReqLen = 56 // struct inet_diag_req_v2
	inetDiagMsgLen = 72 // struct inet_diag_msg

	// Offsets in struct tcp_info, a stable kernel ABI.
	tcpiBytesAcked    = 120
	tcpiBytesReceived = 128
)

// connKey names a loopback TCP connection by the socket at its server end:
// the server's port and the client's.
type connKey struct {
	serverPort, clientPort int
}

// tcpBytes returns, for every established IPv4 TCP socket on the machine,
// the payload bytes it has sent (and had acknowledged) plus those it has
// received, keyed by its local and remote port.
func tcpBytes() (map[connKey]int64, error) {
	fd, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, syscall.NETLINK_INET_DIAG)
	if err != nil {
		return nil, fmt.Errorf("socket diagnostics: %w", err)
	}
	defer syscall.Close(fd)

	req := make([]byte, syscall.SizeofNlMsghdr+inetDiagReqLen)
	native := binary.NativeEndian
	native.PutUint32(req[0:], uint32(len(req)))
	native.PutUint16(req[4:], sockDiagByFamily)
	native.PutUint16(req[6:], syscall.NLM_F_REQUEST|syscall.NLM_F_DUMP)
	native.PutUint32(req[8:], 1) // sequence number
	body := req[syscall.SizeofNlMsghdr:]
	body[0] = syscall.AF_INET
	body[1] = syscall.IPPROTO_TCP
	body[2] = 1 << (inetDiagInfo - 1)
	native.PutUint32(body[4:], 1<<tcpEstablished)
	if err := syscall.Sendto(fd, req, 0, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("socket diagnostics: %w", err)
	}

	out := map[connKey]int64{}
	buf := make([]byte, 1<<16)
	for {
		n, _, err := syscall.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, fmt.Errorf("socket diagnostics: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, fmt.Errorf("socket diagnostics: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case syscall.NLMSG_DONE:
				return out, nil
			case syscall.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := int32(native.Uint32(m.Data)); errno != 0 {
						return nil, fmt.Errorf("socket diagnostics: %w", syscall.Errno(-errno))
					}
				}
				return out, nil
			case sockDiagByFamily:
				if k, b, ok := parseDiagMsg(m.Data); ok {
					out[k] = b
				}
			}
		}
	}
}

// parseDiagMsg reads the ports of an inet_diag_msg and the byte counters of
// its tcp_info attribute.
func parseDiagMsg(d []byte) (connKey, int64, bool) {
	if len(d) < inetDiagMsgLen {
		return connKey{}, 0, false
	}
	// struct inet_diag_sockid starts at offset 4 with the ports in network
	// byte order.
	k := connKey{serverPort: int(binary.BigEndian.Uint16(d[4:])), clientPort: int(binary.BigEndian.Uint16(d[6:]))}
	native := binary.NativeEndian
	for a := d[inetDiagMsgLen:]; len(a) >= 4; {
		l := int(native.Uint16(a[0:]))
		if l < 4 || l > len(a) {
			break
		}
		if native.Uint16(a[2:]) == inetDiagInfo {
			info := a[4:l]
			if len(info) < tcpiBytesReceived+8 {
				return connKey{}, 0, false
			}
			return k, int64(native.Uint64(info[tcpiBytesAcked:]) + native.Uint64(info[tcpiBytesReceived:])), true
		}
		a = a[min((l+3)&^3, len(a)):]
	}
	return connKey{}, 0, false
}
