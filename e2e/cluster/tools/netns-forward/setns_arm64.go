// setns(2) on arm64 (the syscall package does not name it).
package main

const sysSetns = 268
