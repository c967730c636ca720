//! Commands that read: validate, export, status, runs.

use crate::exit::Exit;

use anyhow::Context;

use crate::cli::{ExportArgs, ReportArgs, RunsArgs, StatusArgs, ValidateArgs};
use crate::input::check::check_file;
use crate::report::{shell_quote, Report};
use crate::store::Store;
use crate::{export as csv_export, pipeline, report_html, status as run_status};

pub fn validate(args: ValidateArgs) -> anyhow::Result<Exit> {
    let columns = args.columns.options();
    let rejects = args.rejects.file();
    let report = check_file(&args.input, pipeline::schema(&columns), rejects.as_ref())?;
    let input = args.input.display();
    if report.without_order_id > 0 {
        eprintln!(
            "warning: {input}: {} valid rows have no site_order_identifier (no column, or a blank \
             value): orderbatch derives one from the file's content and row number, so an edited or reordered copy of this file cannot be \
             told apart from new orders by identifier (run refuses such a copy and asks for \
             --same-orders or --new-orders). Give each order its own site_order_identifier.",
            report.without_order_id
        );
    }
    if report.valid + report.rejected == 0 {
        println!("{input}: no data rows after the header; nothing to do");
        return Ok(Exit::Done);
    }
    for (code, count) in &report.by_code {
        println!("{code}: {count} rows");
        for p in report
            .problems
            .iter()
            .filter(|p| &p.rejection.code() == code)
        {
            println!("  {input}:{}: row {}: {}", p.line, p.row, p.rejection);
        }
    }
    if report.rejected > report.problems.len() as u64 {
        println!(
            "(first {} problems shown{})",
            report.problems.len(),
            if rejects.is_some() {
                "; every one is in the rejects file"
            } else {
                "; --rejects FILE.csv lists every one"
            }
        );
    }
    println!("{} valid rows, {} rejected", report.valid, report.rejected);
    Ok(if report.rejected > 0 {
        Exit::RowsLeft
    } else {
        Exit::Done
    })
}

pub fn export(args: ExportArgs) -> anyhow::Result<Exit> {
    let store = Store::open_existing(&args.db)?;
    let run_id = match args.run {
        Some(id) => {
            store.run(id)?.with_context(|| {
                format!(
                    "{} holds no run {id}; see `orderbatch runs --db {}`",
                    args.db.display(),
                    args.db.display()
                )
            })?;
            id
        }
        None => store
            .runs()?
            .last()
            .map(|r| r.id)
            .with_context(|| format!("{} holds no run yet", args.db.display()))?,
    };
    let rows = csv_export::export(
        &store,
        run_id,
        &args.out,
        crate::cells::Cells::from_flag(args.spreadsheet_safe),
    )?;
    println!(
        "exported {rows} rows of run {run_id} to {}",
        args.out.display()
    );
    Ok(Exit::Done)
}

pub fn status(args: StatusArgs) -> anyhow::Result<Exit> {
    let store = Store::open_existing(&args.db)?;
    let runs = run_status::all(&store)?;
    if args.json {
        println!("{}", run_status::to_json(&runs));
    } else if runs.is_empty() {
        println!("{} holds no run yet", args.db.display());
    } else {
        for run in &runs {
            println!("{}", run_status::render(run));
        }
    }
    Ok(Exit::Done)
}

/// Writes the HTML report of `report`'s run to `path`; returns the path.
pub(super) fn write_html(
    store: &Store,
    report: &Report,
    path: &std::path::Path,
) -> anyhow::Result<std::path::PathBuf> {
    let run_id = report.status.run_id;
    let page = report_html::Page {
        report,
        timeline: &store.timeline(run_id)?,
        errors: &store.error_rows(run_id, report_html::FIRST_ROWS)?,
    };
    report_html::write(&page, path)
        .with_context(|| format!("cannot write the HTML report {}", path.display()))?;
    Ok(path.to_path_buf())
}

/// `orderbatch report`: the HTML report of a run, also while it runs.
pub fn report(args: ReportArgs) -> anyhow::Result<Exit> {
    crate::files::check_writable("report", &args.html)?;
    let store = Store::open_existing(&args.db)?;
    let run = match args.run {
        Some(id) => store.run(id)?.with_context(|| {
            format!(
                "{} holds no run {id}; see `orderbatch runs --db {}`",
                args.db.display(),
                args.db.display()
            )
        })?,
        None => store
            .runs()?
            .pop()
            .with_context(|| format!("{} holds no run yet", args.db.display()))?,
    };
    let status = run_status::run_status(&store, &run)?;
    let db = shell_quote(&args.db.display().to_string());
    // The command that resumes it, rebuilt from what the run recorded.
    let command = match run.command.as_str() {
        "ce-retry-payments" => "ce retry-payments".to_string(),
        other => other.to_string(),
    };
    let requests: u64 = status.requests.values().sum();
    let report = Report {
        outcome: match &status.finished_at {
            Some(_) => "finished".to_string(),
            None => "not finished (running, or stopped before its end)".to_string(),
        },
        stages: Vec::new(),
        requests_per_row: requests as f64 / status.total.max(1) as f64,
        resume_command: format!(
            "orderbatch {command} {} --db {db}",
            shell_quote(&run.input_path)
        ),
        retry_command: (status.states.get("failed").copied().unwrap_or(0) > 0)
            .then(|| format!("orderbatch retry --db {db}")),
        status,
    };
    let path = write_html(&store, &report, &args.html)?;
    println!("report of run {}: {}", run.id, path.display());
    Ok(Exit::Done)
}

pub fn runs(args: RunsArgs) -> anyhow::Result<Exit> {
    let store = Store::open_existing(&args.db)?;
    println!(
        "{:>4}  {:<8} {:<20}  {:<20}  {:>8}  input",
        "run", "command", "started", "finished", "rows"
    );
    for run in store.runs()? {
        println!(
            "{:>4}  {:<8} {:<20}  {:<20}  {:>8}  {}",
            run.id,
            run.command,
            run.started_at,
            run.finished_at.as_deref().unwrap_or("-"),
            run.total_rows,
            run.input_path
        );
    }
    Ok(Exit::Done)
}
