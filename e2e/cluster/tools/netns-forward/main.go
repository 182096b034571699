// Command netns-forward carries TCP connections across the boundary between
// the host's network namespace and a real node's, with no address, link or
// firewall rule added on the host:
//
//	netns-forward -netns /run/netns/N -listen-in 10.250.0.1:6443 -dial 127.0.0.1:36001
//	    listens inside N and dials in the host namespace (pods and the node
//	    reach a server that listens on the host's 127.0.0.1)
//	netns-forward -netns /run/netns/N -connect-proxy /path/egress.sock
//	    an HTTP CONNECT proxy on a unix socket in the host namespace that dials
//	    inside N (the API server's egress to kubelets, pods and Services)
//
// A socket belongs to the network namespace of the thread that created it, so
// each socket is created on an OS thread that is switched into N for just
// that call and back. -addr-file receives the listening address once it
// listens. It stops on SIGTERM or SIGINT.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"syscall"
	"time"
)

func main() {
	netnsPath := flag.String("netns", "", "network namespace file, e.g. /run/netns/NAME")
	listenIn := flag.String("listen-in", "", "address to listen on inside the namespace")
	dial := flag.String("dial", "", "address to dial in the host namespace (with -listen-in)")
	proxySock := flag.String("connect-proxy", "", "unix socket of an HTTP CONNECT proxy that dials inside the namespace")
	addrFile := flag.String("addr-file", "", "file that receives the listening address")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	if *netnsPath == "" || (*listenIn == "") == (*proxySock == "") || (*listenIn != "" && *dial == "") {
		flag.Usage()
		os.Exit(2)
	}
	target, err := os.Open(*netnsPath)
	if err != nil {
		log.Fatal(err)
	}
	var ln net.Listener
	var handle func(net.Conn)
	if *listenIn != "" {
		err = inNetns(target, func() (e error) { ln, e = net.Listen("tcp", *listenIn); return })
		handle = func(c net.Conn) {
			forward(c, func() (net.Conn, error) { return net.DialTimeout("tcp", *dial, 10*time.Second) })
		}
	} else {
		_ = os.Remove(*proxySock)
		ln, err = net.Listen("unix", *proxySock)
		handle = func(c net.Conn) { connectProxy(c, target) }
	}
	if err != nil {
		log.Fatal(err)
	}
	if *addrFile != "" {
		if err := os.WriteFile(*addrFile, []byte(ln.Addr().String()+"\n"), 0o644); err != nil {
			log.Fatal(err)
		}
	}
	log.Printf("listening on %s", ln.Addr())
	go func() {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
		<-sigs
		ln.Close()
		os.Exit(0)
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go handle(c)
	}
}

// inNetns runs f on an OS thread switched into the namespace of target.
func inNetns(target *os.File, f func() error) error {
	runtime.LockOSThread()
	self, err := os.Open(fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), syscall.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer self.Close()
	if err := setns(target); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	ferr := f()
	if err := setns(self); err != nil {
		// The thread is stuck in the other namespace: leave it locked, so the
		// runtime ends it with this goroutine rather than reusing it.
		return fmt.Errorf("switching back: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}

func setns(f *os.File) error {
	_, _, e := syscall.RawSyscall(sysSetns, f.Fd(), syscall.CLONE_NEWNET, 0)
	if e != 0 {
		return e
	}
	return nil
}

// connectProxy answers one HTTP CONNECT request by dialing its target inside
// the namespace, then carries the bytes both ways.
func connectProxy(c net.Conn, target *os.File) {
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		c.Close()
		return
	}
	if req.Method != http.MethodConnect {
		fmt.Fprintf(c, "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
		c.Close()
		return
	}
	var up net.Conn
	err = inNetns(target, func() (e error) {
		// Dial creates the socket (and starts connecting) on this thread.
		up, e = net.DialTimeout("tcp", req.Host, 10*time.Second)
		return
	})
	if err != nil {
		fmt.Fprintf(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
		c.Close()
		return
	}
	if _, err := fmt.Fprintf(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		c.Close()
		up.Close()
		return
	}
	pipe(&bufConn{c, br}, up)
}

func forward(c net.Conn, dial func() (net.Conn, error)) {
	up, err := dial()
	if err != nil {
		log.Printf("dial: %v", err)
		c.Close()
		return
	}
	pipe(c, up)
}

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b *bufConn) CloseWrite() error {
	if cw, ok := b.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return b.Conn.Close()
}

// pipe copies both ways; each direction's end is passed on as a half close.
func pipe(a, b net.Conn) {
	var wg sync.WaitGroup
	cp := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			_ = dst.Close()
		}
	}
	wg.Add(2)
	go cp(a, b)
	go cp(b, a)
	wg.Wait()
	a.Close()
	b.Close()
}
