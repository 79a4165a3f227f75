#!/usr/bin/env perl
# Submit a command to Slurm as an array job, with Kaldi's run.pl interface:
#   slurm.pl [--mem 8G] [--num-threads N] [--gpu N] [--time HH:MM:SS] [--partition P]
#            [--max-jobs-run N] [JOB=1:N] LOGFILE COMMAND...
# "JOB" in LOGFILE and COMMAND becomes the array index. Waits for the array to finish
# (sbatch --wait) and exits 1 if any job failed, naming the logs to read.
use strict;
use warnings;

my %opt = (mem => "", "num-threads" => 1, gpu => 0, time => "", partition => "", "max-jobs-run" => 0);
while (@ARGV && $ARGV[0] =~ /^--([\w-]+)$/) {
  my $name = $1; shift @ARGV;
  die "slurm.pl: unknown option --$name\n" unless exists $opt{$name};
  $opt{$name} = shift @ARGV;
}
my ($job_var, $first, $last) = ("", 1, 1);
if (@ARGV && $ARGV[0] =~ /^([\w_]+)=(\d+):(\d+)$/) { ($job_var, $first, $last) = ($1, $2, $3); shift @ARGV; }
@ARGV >= 2 or die "usage: slurm.pl [options] [JOB=1:N] LOGFILE COMMAND...\n";
my $logfile = shift @ARGV;
my $cmd = join(" ", map { my $a = $_; ($a =~ /^[\w\/\.\-=:,+@%]+$/) ? $a : "'" . join("'\\''", split(/'/, $a, -1)) . "'" } @ARGV);
if ($job_var) {
  $cmd =~ s/\b$job_var\b/\${SLURM_ARRAY_TASK_ID}/g;
  $logfile =~ s/\b$job_var\b/\${SLURM_ARRAY_TASK_ID}/g;
}
my $dir = $logfile; $dir =~ s{/[^/]*$}{}; $dir = "." if $dir eq $logfile;
my $qdir = "$dir/q"; system("mkdir", "-p", $qdir) == 0 or die "slurm.pl: cannot create $qdir\n";
my $base = $logfile; $base =~ s{.*/}{}; $base =~ s/\$\{SLURM_ARRAY_TASK_ID\}/JOB/g;
my $script = "$qdir/$base.sh";
open(my $fh, ">", $script) or die "slurm.pl: cannot write $script\n";
print $fh "#!/usr/bin/env bash\ncd " . `pwd` . "export PATH='$ENV{PATH}'\nSLURM_ARRAY_TASK_ID=\${SLURM_ARRAY_TASK_ID:-$first}\n";
print $fh "log=$logfile\n{ echo \"# $cmd\"; echo \"# Started at \$(date)\"; } > \$log\n";
print $fh "start=\$(date +%s)\n( $cmd ) >> \$log 2>&1\nrc=\$?\n";
print $fh "{ echo \"# Accounting: time=\$((\$(date +%s) - start)) threads=$opt{'num-threads'}\"; echo \"# Ended (code \$rc) at \$(date)\"; } >> \$log\nexit \$rc\n";
close $fh;
my @sbatch = ("sbatch", "--wait", "--parsable", "--output=/dev/null", "--job-name=$base",
              "--cpus-per-task=$opt{'num-threads'}");
push @sbatch, "--array=$first-$last" . ($opt{"max-jobs-run"} ? "%$opt{'max-jobs-run'}" : "") if $job_var;
push @sbatch, "--mem=$opt{mem}" if $opt{mem};
push @sbatch, "--gres=gpu:$opt{gpu}" if $opt{gpu};
push @sbatch, "--time=$opt{time}" if $opt{time};
push @sbatch, "--partition=$opt{partition}" if $opt{partition};
my $rc = system(@sbatch, $script);
if ($rc != 0) {
  my $pattern = $logfile; $pattern =~ s/\$\{SLURM_ARRAY_TASK_ID\}/*/g;
  print STDERR "slurm.pl: job(s) failed; read $pattern (script $script)\n";
  exit 1;
}
exit 0;
