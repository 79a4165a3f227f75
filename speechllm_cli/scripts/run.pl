#!/usr/bin/env perl
# Run a command locally, once or as an array of jobs, Kaldi's run.pl interface:
#   run.pl [--max-jobs-run N] [JOB=1:N] LOGFILE COMMAND...
# Every "JOB" in LOGFILE and COMMAND becomes the job index. Each job's stdout and stderr go to
# its log, which starts with the command and ends with its exit status and run time. Exits 1 if
# any job failed, naming the logs to read.
use strict;
use warnings;
use POSIX ":sys_wait_h";

my $max_jobs = 0;    # 0: as many as the machine has cores
while (@ARGV && $ARGV[0] =~ /^--/) {
  my $opt = shift @ARGV;
  if ($opt eq "--max-jobs-run") { $max_jobs = shift @ARGV; }
  elsif ($opt =~ /^--(config|mem|gpu|num-threads|time)$/) { shift @ARGV; }   # slurm.pl options, ignored here
  else { die "run.pl: unknown option $opt\n"; }
}
my ($job_var, $first, $last) = ("", 1, 1);
if (@ARGV && $ARGV[0] =~ /^([\w_]+)=(\d+):(\d+)$/) {
  ($job_var, $first, $last) = ($1, $2, $3);
  shift @ARGV;
}
@ARGV >= 2 or die "usage: run.pl [--max-jobs-run N] [JOB=1:N] LOGFILE COMMAND...\n";
my $logfile = shift @ARGV;
my $cmd = join(" ", map { my $a = $_; ($a =~ /^[\w\/\.\-=:,+@%]+$/) ? $a : "'" . join("'\\''", split(/'/, $a, -1)) . "'" } @ARGV);
if ($max_jobs <= 0) {
  my $n = `nproc 2>/dev/null`; chomp $n; $max_jobs = ($n =~ /^\d+$/ && $n > 0) ? $n : 1;
}

sub substitute { my ($s, $j) = @_; $s =~ s/\b$job_var\b/$j/g if $job_var; return $s; }

my (%running, @failed);
for my $job ($first .. $last) {
  while (scalar(keys %running) >= $max_jobs) { reap(); }
  my $log = substitute($logfile, $job);
  my $this_cmd = substitute($cmd, $job);
  my $dir = $log; $dir =~ s{/[^/]*$}{};
  system("mkdir", "-p", $dir) if $dir ne $log;
  my $pid = fork();
  die "run.pl: fork failed: $!\n" unless defined $pid;
  if ($pid == 0) {
    open(my $fh, ">", $log) or die "run.pl: cannot write $log: $!\n";
    my $start = time();
    print $fh "# $this_cmd\n# Started at " . localtime() . "\n";
    close $fh;
    my $rc = system("bash", "-c", "( $this_cmd ) >>'$log' 2>&1");
    my $status = $rc == -1 ? 127 : ($rc & 127 ? 128 + ($rc & 127) : $rc >> 8);
    open($fh, ">>", $log) or exit 1;
    print $fh "# Accounting: time=" . (time() - $start) . " threads=1\n";
    print $fh "# Ended (code $status) at " . localtime() . "\n";
    close $fh;
    exit($status == 0 ? 0 : 1);
  }
  $running{$pid} = $log;
}
reap() while %running;

sub reap {
  my $pid = waitpid(-1, 0);
  return if $pid <= 0 || !exists $running{$pid};
  push @failed, $running{$pid} if $? != 0;
  delete $running{$pid};
}

if (@failed) {
  my $n = $last - $first + 1;
  print STDERR "run.pl: " . scalar(@failed) . " / $n failed, log is in " . join(" ", sort @failed) . "\n";
  exit 1;
}
exit 0;
