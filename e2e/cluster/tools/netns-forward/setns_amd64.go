// setns(2) on amd64 (the syscall package does not name it).
package main

const sysSetns = 308
