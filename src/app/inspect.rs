//! Commands that read: validate, export, status, runs.

use crate::exit::Exit;

use anyhow::Context;

use crate::cli::{ExportArgs, RunsArgs, StatusArgs, ValidateArgs};
use crate::input::check::check_file;
use crate::store::Store;
use crate::{export as csv_export, pipeline, status as run_status};

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
